"""The lab's pytest plugin as a user's suite meets it: reports, markers, xdist, Ctrl+C, keep.

Some tests run in this session's lab (the plugin's ``serial_lab``); the others run a
user's suite in a pytest of its own (a child process, in a folder of the test's), on an
emulated lab where QEMU is not the point, and on one QEMU guest where it is.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest

from emulator.sandbox import userland_unavailable
from gateway.machines.image import IMAGE_DIR, IMAGE_ENV
from gateway.machines.process import wait_pid_exit
from gateway.testing import Console, ConsoleError, Sac
from gateway.testing.lab import qemu_pids
from gateway.testing.timeouts import scaled
from tests.e2e.conftest import GUEST_PASSWORD, require_qemu

pytestmark = pytest.mark.e2e

ConsoleFactory = Callable[..., Console]
ROOT = Path(__file__).resolve().parents[2]
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
ONE_QEMU_GUEST = """
state_dir = "state"

[gateway]
port = 0

[[resource_groups]]
name = "lab-rg"
location = "local"

[[vms]]
name = "vm-1"
resource_group = "lab-rg"
os = "linux"
backend = "qemu"

[[users]]
name = "dave"
password = "dave"
roles = [{ role = "Virtual Machine Contributor", scope = "resourceGroups/lab-rg" }]
"""


def suite(folder: Path, source: str, ini: str = "") -> Path:
    """A user's suite in ``folder``: ``test_suite.py`` holding ``source``, and ``ini``
    in its pytest.ini."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text(INI + ini)
    (folder / "test_suite.py").write_text(source)
    return folder


def run_suite(
    folder: Path,
    *args: str,
    timeout: float = 180,
    python: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """pytest on the suite in ``folder``, as its user runs it (with the interpreter
    ``python``, default this one, and the environment ``env``); what it printed."""
    return subprocess.run(
        [str(python or sys.executable), *PYTEST[1:], "--basetemp", str(folder / "tmp"), *args],
        cwd=folder, capture_output=True, text=True, timeout=scaled(timeout),
        stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip


# -- in this session's lab ----------------------------------------------------------------


@pytest.mark.qemu
def test_sac_channel_login_and_a_command(console: ConsoleFactory) -> None:
    """On win-1, SAC's cmd makes a channel; ch -si N and the guest password open
    C:\\Windows\\system32>, where hostname answers; Esc+Tab 0 is back at SAC>, where id
    names the computer."""
    sac = Sac(console("win-1"))
    number = sac.cmd()
    sac.channel(number)
    sac.login("Administrator", GUEST_PASSWORD)
    assert sac.run("hostname") == "WIN-1"
    sac.back()
    assert "Computer Name: WIN-1" in sac.command("id")


@pytest.mark.qemu
@pytest.mark.lab_fresh("linux-2")
def test_lab_fresh_resets_the_named_guest_first(console: ConsoleFactory) -> None:
    """lab_fresh("linux-2"): linux-2's console has shown a whole new boot before the test
    gets it; linux-1, not named, was left alone."""
    fresh = console("linux-2")
    assert re.search(r"Linux version .*linux-2 login: ", fresh.live_text, re.S)
    assert fresh.power_state == "running"
    other = console("linux-1")
    other.wait_for_boot()
    assert "Linux version" not in other.live_text


@pytest.mark.qemu
def test_a_watcher_sees_the_writer_and_displaces_nobody(console: ConsoleFactory) -> None:
    """watch(): a read-only view of linux-1 sees what the writer's command prints; the
    writer keeps its seat, and the watcher's commands are refused."""
    writer = console("linux-1")
    writer.login()
    viewer = writer.watch()
    assert writer.run("echo seen-by-the-watcher") == ("seen-by-the-watcher\n", 0)
    viewer.expect("seen-by-the-watcher")
    with pytest.raises(ConsoleError, match="nmi refused"):
        viewer.nmi()
    assert writer.run("true") == ("", 0)


@pytest.mark.qemu
def test_a_scale_set_instance_restarts_gracefully(console: ConsoleFactory) -> None:
    """console("web-vmss", instance=0): restart() waits for the graceful restart; the
    instance boots again and root logs in once more."""
    instance = console("web-vmss", instance=0)
    instance.wait_for_boot()
    assert instance.restart() == "Successfully restarted VM"
    instance.wait_for_boot()
    instance.login()
    output, status = instance.run("hostname")
    assert (status, output.startswith("web-vmss")) == (0, True), output


# -- a user's suite in a pytest of its own ---------------------------------------------------


def test_a_failing_test_reports_each_console_it_used(tmp_path: Path) -> None:
    """A failing test's report ends with the transcript of each console it used (win-1's
    SAC screens redraw with ANSI sequences: they are stripped); a passing test's has none."""
    folder = suite(
        tmp_path,
        """
from gateway.testing import Sac

def test_passes(console):
    console("linux-1").wait_for_boot()

def test_fails(console):
    linux = console("linux-1")
    linux.login()
    assert linux.run("hostname") == ("web-1\\n", 0)

def test_fails_on_windows(console):
    sac = Sac(console("win-1"))
    sac.channel(sac.cmd())
    sac.login("Administrator", "not-the-password")
""",
    )
    result = run_suite(folder, "--lab-emulated", "-rN")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "2 failed, 1 passed" in out
    sections = re.findall(r"-+ Serial console (\S+) \(ANSI stripped\) -+", out)
    assert sections == ["linux-1", "win-1"], out
    linux = out.split("Serial console linux-1")[1]
    assert "root@linux-1:~# printf" in linux
    assert re.search(r"__end_\w+_0\n", linux)
    windows = out.split("Serial console win-1")[1]
    assert "Unable to authenticate" in windows
    assert "\x1b" not in out


def test_a_project_that_installs_the_lab_gets_the_plugin(tmp_path: Path) -> None:
    """Another project's environment, where the lab is installed from its checkout by pip
    (not editable) with pytest: its suite gets the fixtures with no configuration, and with
    SERIAL_CONSOLE_LAB_IMAGES naming the built image its emulated guests run the image's
    shell, and the portal is served. Without it, the lab says where it looked and what to
    do."""
    reason = userland_unavailable()
    if reason is not None:
        pytest.skip(f"emulated guests cannot run the image's userland here: {reason}")
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    installed = subprocess.run(
        [
            sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet",
            "--python", str(python), "install", str(ROOT), "pytest", "pytest-asyncio",
        ],
        capture_output=True, text=True, timeout=scaled(600), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    folder = suite(
        tmp_path / "project",
        """
def test_a_real_shell(console):
    linux = console("linux-1")
    linux.login()
    assert linux.run("echo $((6 * 7)) $(hostname)") == ("42 linux-1\\n", 0)

def test_the_portal_came_with_it(serial_lab):
    import httpx
    page = httpx.get(serial_lab.url + "/")
    assert page.status_code == 200 and "<title>Serial Console Lab</title>" in page.text
""",
    )
    env = {**os.environ, IMAGE_ENV: str(IMAGE_DIR)}
    result = run_suite(folder, "--lab-emulated", python=python, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout

    env[IMAGE_ENV] = str(tmp_path / "nowhere")
    (folder / "test_suite.py").write_text("def test_up(serial_lab):\n    pass\n")
    result = run_suite(folder, "--lab-emulated", python=python, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.split("the lab's warnings")[-1]
    assert f"no guest image in {tmp_path / 'nowhere'} ({IMAGE_ENV})" in summary, result.stdout

    del env[IMAGE_ENV]
    result = run_suite(folder, "--lab-emulated", python=python, env=env)
    summary = result.stdout.split("the lab's warnings")[-1]
    assert f"installed without its checkout; set {IMAGE_ENV} to a folder" in summary


def test_a_broken_lab_file_fails_each_test_with_one_line(tmp_path: Path) -> None:
    """A lab file with a mistake: each test that needs the lab fails with the file, the
    key and what was expected, and no traceback; a test without the lab still passes."""
    folder = suite(
        tmp_path,
        "def test_needs_it(console):\n    console('linux-1')\n\ndef test_plain():\n    pass\n",
    )
    (folder / "lab.toml").write_text('[[vms]]\nname = "vm-1"\nos = "bsd"\n')
    result = run_suite(folder, "--lab-file", "lab.toml")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout or "1 passed, 1 error" in result.stdout
    assert re.search(r"--lab-file: \S*lab\.toml: \S+", result.stdout), result.stdout
    assert "Traceback" not in result.stdout
    assert "During handling" not in result.stdout
    assert "gateway/testing/plugin.py" not in result.stdout


def test_each_xdist_worker_has_a_lab_of_its_own(tmp_path: Path) -> None:
    """Under -n 2 each worker starts its own lab (its own port and state), and the
    consoles of both work at once. (The emulated lab comes from the ini file here.)"""
    seen = tmp_path / "seen"
    seen.mkdir()
    folder = suite(
        tmp_path / "suite",
        f"""
import os, pytest

@pytest.mark.parametrize("n", range(4))
def test_hostname(console, serial_lab, n):
    assert {{vm.machine.backend for vm in serial_lab.config.vms}} == {{"emulated"}}
    linux = console("linux-1")
    linux.login()
    assert linux.run("hostname") == ("linux-1\\n", 0)
    worker = os.environ["PYTEST_XDIST_WORKER"]
    with open(os.path.join({str(seen)!r}, f"{{worker}}-{{n}}"), "w") as out:
        out.write(serial_lab.url)
""",
        ini="lab_emulated = true\n",
    )
    result = run_suite(folder, "-n", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    urls = {path.name.split("-")[0]: path.read_text() for path in seen.iterdir()}
    assert len(list(seen.iterdir())) == 4
    assert set(urls) == {"gw0", "gw1"}
    assert urls["gw0"] != urls["gw1"]


def test_lab_xdist_group_gives_every_worker_one_lab_on_one_worker(tmp_path: Path) -> None:
    """--lab-xdist-group with --dist loadgroup: every test that uses the lab runs on one
    worker, which starts the one lab, in the order written; tests with no lab run on any."""
    seen = tmp_path / "seen"
    seen.mkdir()
    folder = suite(
        tmp_path / "suite",
        f"""
import os, pytest

def note(name, text=""):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    with open(os.path.join({str(seen)!r}, name), "w") as out:
        out.write(worker + " " + text)

@pytest.mark.parametrize("n", range(3))
def test_in_the_lab(console, serial_lab, n):
    done = {{p for p in os.listdir({str(seen)!r}) if p.startswith("lab-")}}
    assert done == {{f"lab-{{i}}" for i in range(n)}}  # in the order written
    linux = console("linux-1")
    linux.login()
    assert linux.run("hostname") == ("linux-1\\n", 0)
    note(f"lab-{{n}}", serial_lab.url)

@pytest.mark.parametrize("n", range(6))
def test_with_no_lab(n):
    note(f"x-{{n}}")
""",
        ini="lab_emulated = true\n",
    )
    result = run_suite(folder, "-n", "2", "--dist", "loadgroup", "--lab-xdist-group", "one-lab")
    assert result.returncode == 0, result.stdout + result.stderr
    notes = {path.name: path.read_text().split(" ") for path in seen.iterdir()}
    assert len(notes) == 9
    assert len({tuple(notes[f"lab-{n}"]) for n in range(3)}) == 1  # one worker, one lab
    assert len({worker for worker, *_ in notes.values()}) == 2  # the rest ran beside it


def test_lab_keep_leaves_it_up_and_lab_url_uses_it(tmp_path: Path) -> None:
    """--lab-keep: the run ends, the lab stays and the summary says how to reach and stop
    it; a second run given --lab-url uses that lab, as alice; SIGINT then stops it."""
    folder = suite(tmp_path, "def test_up(serial_lab):\n    assert serial_lab.url\n")
    kept = run_suite(folder, "--lab-emulated", "--lab-keep")
    assert kept.returncode == 0, kept.stdout + kept.stderr
    found = re.search(r"left running at (http://127\.0\.0\.1:\d+) \(pid (\d+)", kept.stdout)
    assert found, kept.stdout
    url, pid = found.group(1), int(found.group(2))
    try:
        assert f"serial-console login --url {url} --username alice --password alice" in (
            kept.stdout
        )
        assert f"kill -INT {pid}" in kept.stdout
        suite(
            folder,
            "def test_there(console):\n"
            "    linux = console('linux-1')\n"
            "    linux.login()\n"
            "    assert linux.run('whoami') == ('root\\n', 0)\n",
        )
        used = run_suite(folder, "--lab-url", url, "--lab-user", "alice", "--lab-password", "alice")
        assert used.returncode == 0, used.stdout + used.stderr
    finally:
        os.kill(pid, signal.SIGINT)
        asyncio.run(wait_pid_exit(pid, scaled(60)))


@pytest.mark.qemu
@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_an_interrupted_run_leaves_no_qemu(tmp_path: Path, how: str) -> None:
    """Ctrl+C on the terminal of a run whose test waits on a QEMU guest's console: pytest
    stops, and the lab with it, deallocating the guest. kill -9 of the run: the lab hears
    of it (SIGTERM from the kernel) and deallocates too."""
    require_qemu()
    folder = suite(
        tmp_path,
        """
def test_waits(console, serial_lab):
    vm = console("vm-1")
    vm.wait_for_boot()
    print("lab-pid", serial_lab.process.pid, flush=True)
    vm.expect("never printed", timeout=600)
""",
    )
    (folder / "lab.toml").write_text(ONE_QEMU_GUEST)
    child = pexpect.spawn(
        PYTEST[0],
        [*PYTEST[1:], "-s", "--basetemp", str(folder / "tmp"), "--lab-file", "lab.toml"],
        cwd=folder,
        timeout=scaled(120),
    )
    child.expect(r"lab-pid (\d+)")
    lab_pid = int(child.match.group(1))
    state = folder / "tmp" / "serial-lab0" / "state"
    assert len(qemu_pids(state)) == 1
    if how == "ctrl-c":
        child.sendintr()  # what the terminal sends on Ctrl+C
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 2, child.before  # pytest's "interrupted"
        assert b"KeyboardInterrupt" in child.before
    else:
        child.kill(signal.SIGKILL)
        child.close(force=True)
    asyncio.run(wait_pid_exit(lab_pid, scaled(60)))
    assert qemu_pids(state) == []
