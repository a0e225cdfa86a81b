"""The guest image's userland in Linux namespaces, on a PTY of its own.

An emulated Linux guest can run the image's real busybox init, getty, login and sh (the
initramfs ``make images`` builds) instead of the personality's small shell. Each guest is a
process tree in its own user, mount, PID, UTS, IPC and network namespaces, made with
util-linux (``unshare``, ``nsenter``, ``setpriv``, ``prlimit``, ``mount``, ``pivot_root``)
and a few lines of ``sh`` between them; nothing is installed, and nothing but the unpacked
image (in the lab's state folder) is written on the host.

The userland's console is a second PTY pair: its slave is the guest's ``/dev/console`` and
``/dev/ttyS0`` (a real tty: getty's modes, echo off for the password, Ctrl+C), its master
is read and written by ``Sandbox`` in the event loop, and the personality in front of it
(``emulator.userland``) keeps the serial port's own PTY, so kernel text and the
userland's output reach the port in the order they happen and a BREAK never reaches the
userland.

Why util-linux and not bubblewrap: root inside must be an unprivileged id outside even when
the lab runs as root, and busybox ``login`` calls ``setgroups``, which a user namespace
allows only when its id maps are written by a privileged process. bubblewrap maps root to
the caller's own id (root, here), and Debian 12's bubblewrap (0.8) has no overlay mounts.
So the lab (as root) writes the maps itself and util-linux does the rest::

    unshare --user                      holds a new user namespace; the lab writes its maps:
                                        root inside = HOST_ID outside, setgroups allowed
    prlimit ... unshare --mount sh      (host root, a private mount namespace) binds the
                                        unpacked image and the lab's layer on a small tmpfs
    nsenter --user -S 0 -G 0            joins the user namespace as its root (HOST_ID)
    setpriv --pdeathsig KILL            the tree dies with the lab, whatever kills it
    unshare --mount --pid --uts         the guest's own namespaces (loopback only), owned by
            --ipc --net --fork            the user namespace; the child is PID 1
    sh                                  tmpfs + overlay root (the image, read-only, under
                                        the lab's layer, under a writable tmpfs), /proc
                                        (the emulated kernel's cmdline and version), /dev
                                        (null, zero, tty, random, the console, and kmsg:
                                        the emulated kernel's log), host name, loopback up
    setpriv --bounding-set ... sh       capabilities cut to what init needs, pivot_root
                                        into the guest's root, the host's tree unmounted
    /sbin/init                          the image's busybox init, PID 1 on the console

The writable layer is a tmpfs: what the guest writes lives until it reboots or is reset, as
on the QEMU guest whose root is its initramfs. Resource limits: processes, open files,
address space per process, core dumps off, and the tmpfs's size.

``userland_unavailable()`` says why this machine cannot run it (not root, a tool missing,
the kernel refusing user namespaces or overlayfs in them, no image), or None.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import select
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import termios
from collections.abc import Callable
from pathlib import Path

from emulator import linux_texts as texts
from gateway.machines.image import IMAGE_DIR, INITRD, not_built

log = logging.getLogger("serial_console_lab.emulator")

HOST_ID = 2_000_000_000  # root (and every id) inside a guest, seen from the host
TOOLS = ("unshare", "nsenter", "setpriv", "prlimit", "mount", "sh")
LIMITS = {
    "nproc": 64,  # processes of the guest (counted per user namespace)
    "nofile": 256,
    "as": 256 << 20,  # address space of each process
    "core": 0,
}
TMPFS_SIZE = "16m"  # the guest's writable layer
# What init and its children keep (capabilities of the user namespace, not of the host):
# mounts (rcS), reboot(2), login's setuid/setgid/chown, kill, chroot.
KEEP_CAPS = (
    "chown,dac_override,dac_read_search,fowner,fsetid,kill,setgid,setuid,setpcap,"
    "net_bind_service,sys_chroot,sys_admin,sys_boot,audit_write"
)
READ_SIZE = 65536
INPUT_LIMIT = 64 * 1024  # typed bytes the guest has not read yet, beyond which they are lost
INPUT_HIGH = 8 * 1024  # typed bytes held here beyond which the serial port is not read
INPUT_CHUNK = 256  # typed bytes handed to the guest's tty at a time, between reads
ECHO_ROOM = 1024  # the tty's unread output beyond which no input is handed over

# What replaces the image's rcS: the same steps, with the kernel command line and QEMU's
# fw_cfg (neither exists here) replaced by what the lab hands over: the host name is set
# before init, the password is /etc/lab-password (the image's own fallback).
RC_S = """#!/bin/sh
# Serial Console Lab emulated guest: the kernel is the lab's emulation, this userland is the
# image's. /proc and /dev are set up before init; the host name comes from the lab, the
# root password from /etc/lab-password (written by the lab, read once, then removed).
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
ln -sf pts/ptmx /dev/ptmx
host=$(hostname)
echo "$host" > /etc/hostname
hash=$(mkpasswd -m sha512 < /etc/lab-password)  # not in argv
rm -f /etc/lab-password
echo "root:$hash:0:0:root:/root:/bin/sh" > /etc/passwd
echo "lab guest $host is up"
"""
RC_K = """#!/bin/sh
echo "lab guest $(hostname) is shutting down"
sync
"""
# busybox dmesg asks the host's kernel (klogctl), which a guest may not read: the emulated
# kernel's log is the file the lab keeps at /dev/kmsg, which /bin/dmesg prints. uname(2)
# answers with the host kernel's release: /bin/uname puts the emulated kernel's in its place
# (from /proc/version, which is the emulated kernel's). Root's shell runs both scripts for
# ``dmesg`` and ``uname`` (busybox's shell would run its own applets first).
PROFILE = """# Serial Console Lab emulated guest: dmesg and uname show the emulated kernel.
alias dmesg=/bin/dmesg
alias uname=/bin/uname
"""
UNAME = """#!/bin/sh
# Serial Console Lab emulated guest: the kernel's release and version are the emulated
# kernel's (/proc/version), not those of the host that runs this userland.
busybox uname "$@" | busybox awk -v hr="$(busybox uname -r)" -v hv="$(busybox uname -v)" '
    function put(text, was, now,  at) {
        at = was == "" ? 0 : index(text, was)
        return at ? substr(text, 1, at - 1) now substr(text, at + length(was)) : text
    }
    BEGIN {
        getline banner < "/proc/version"
        split(banner, word, " ")
        at = index(banner, ") #")
        release = word[3]
        build = at ? substr(banner, at + 2) : hv
    }
    { print put(put($0, hr, release), hv, build) }'
"""
DMESG = """#!/bin/sh
# Serial Console Lab emulated guest: the kernel's log is the emulated kernel's.
case "$1" in
    -h|--help) echo "Usage: dmesg   print the kernel's log"; exit 0 ;;
esac
exec cat /dev/kmsg
"""
OS_RELEASE = """PRETTY_NAME="Serial Console Lab guest (BusyBox)"
NAME="Serial Console Lab guest"
ID=serial-console-lab
ID_LIKE=busybox
HOME_URL="https://busybox.net/"
"""

# The lab's layer over the image: (path, text, mode) of each file it adds or replaces.
LAB_LAYER = (
    ("etc/init.d/rcS", RC_S, 0o755),
    ("etc/init.d/rcK", RC_K, 0o755),
    ("etc/os-release", OS_RELEASE, 0o644),
    ("bin/dmesg", DMESG, 0o755),
    ("bin/uname", UNAME, 0o755),
    ("root/.profile", PROFILE, 0o644),
)

# Host root, in a private mount namespace: the image and the lab's layer, bound read-only
# on a small tmpfs the guest's user can walk to (the state folder may not be).
STAGE = """set -e
exec 7<"$1" 8<"$2" 6<"$3"
shift 3
mount -t tmpfs -o mode=0755,size=64k lab /tmp
mkdir /tmp/lower /tmp/lab /tmp/guest
touch /tmp/kmsg
mount --bind -o ro /proc/self/fd/7 /tmp/lower
mount --bind -o ro /proc/self/fd/8 /tmp/lab
mount --bind -o ro /proc/self/fd/6 /tmp/kmsg
exec 6<&- 7<&- 8<&-
exec "$@"
"""
# Root of the user namespace, PID 1 of the guest's PID namespace: its root and devices.
GUEST = """set -e
host=$1 password=$2 console=$3 cmdline=$4 version=$5
mount -t tmpfs -o mode=0755,size={size} guest /tmp/guest
cd /tmp/guest
mkdir upper work root upper/etc
cat "/proc/self/fd/$password" > upper/etc/lab-password
chmod 600 upper/etc/lab-password
mount -t overlay -o lowerdir=/tmp/lab:/tmp/lower,upperdir=upper,workdir=work,userxattr guest root
cd root
for dev in null zero full random urandom tty; do
    touch dev/$dev
    mount --bind /dev/$dev dev/$dev
done
touch dev/console dev/ttyS0 dev/kmsg
mount --bind /tmp/kmsg dev/kmsg
mount --bind "$console" dev/console
mount --bind "$console" dev/ttyS0
mount -t proc -o nosuid,nodev,noexec proc proc
# The emulated kernel's command line and version, not the host's.
printf '%s\\n' "$cmdline" > /tmp/guest/cmdline
printf '%s\\n' "$version" > /tmp/guest/version
mount --bind -o ro /tmp/guest/cmdline proc/cmdline
mount --bind -o ro /tmp/guest/version proc/version
/tmp/lower/bin/busybox hostname "$host"
/tmp/lower/bin/busybox ip link set lo up
exec setpriv --bounding-set -all,+{caps} -- \\
    /bin/sh -c 'pivot_root . . && umount -l . && cd / && exec /usr/bin/env -i /sbin/init'
"""


class SandboxError(Exception):
    """The userland cannot be started; the message says why."""


def userland_unavailable(image_dir: Path = IMAGE_DIR) -> str | None:
    """Why emulated Linux guests cannot run the image's userland here, or None when they can.

    Checked once per process (the answer is cached): root, util-linux's tools, the image,
    then a real try (a user namespace with a mapped root, overlayfs in it).
    """
    key = str(image_dir)
    if key not in _PROBED:
        _PROBED[key] = _probe(image_dir)
    return _PROBED[key]


_PROBED: dict[str, str | None] = {}


def _probe(image_dir: Path) -> str | None:
    if os.geteuid() != 0:
        return (
            "the lab does not run as root: root inside a guest must map to an unprivileged "
            "id with setgroups allowed (busybox login needs it), which only root can write"
        )
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"util-linux's {', '.join(missing)} not found (apt-get install util-linux)"
    if not (image_dir / INITRD).is_file():
        return not_built(image_dir)
    with tempfile.TemporaryDirectory(prefix="userland-probe-") as tmp:
        try:
            image = UserlandImage(image_dir / INITRD, Path(tmp))
            image.prepare()
            userns = _user_namespace()
        except (OSError, SandboxError, subprocess.SubprocessError) as err:
            return f"cannot make a user namespace with a mapped root: {err}"
        try:
            argv = image.command(userns, "probe", 0, "/dev/null", init=("true",))
            r, w = os.pipe()
            os.close(w)
            r = _high_fd(r)
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                pass_fds=(userns, r),
                timeout=30,
                check=False,
                text=True,
            )
            os.close(r)
        except (OSError, subprocess.SubprocessError) as err:
            return f"the namespaces cannot be made: {err}"
        finally:
            os.close(userns)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return f"the kernel refused the guest's namespaces or overlay: {why}"
    return None


def _high_fd(fd: int) -> int:
    """``fd`` moved to 10 or above: the shell steps use 0-9 (sh redirects only those)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def _user_namespace() -> int:
    """A new user namespace whose root is HOST_ID outside (setgroups allowed); its fd."""
    holder = subprocess.Popen(
        ["unshare", "--user", "--", "sh", "-c", "echo; read x"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        if holder.stdout.readline() != b"\n":
            raise SandboxError("unshare --user failed (user namespaces refused by the kernel?)")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{holder.pid}/{name}", "w") as f:
                f.write(f"0 {HOST_ID} 1\n")
        return _high_fd(os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC))
    finally:
        with contextlib.suppress(OSError):
            if holder.stdin is not None:
                holder.stdin.close()
        holder.wait()
        with contextlib.suppress(OSError):
            if holder.stdout is not None:
                holder.stdout.close()


class UserlandImage:
    """The image's initramfs unpacked once under ``cache_root``, plus the lab's layer.

    ``prepare()`` unpacks it into ``cache_root/userland-<digest>`` (digest of the initramfs
    and the lab's layer: a rebuilt image gets a new folder), owned by HOST_ID so that it is
    root's inside. Labs running at once share it: each unpacks into a folder of its own
    and renames it into place, the first one wins. ``command()`` builds the command line
    of one guest.
    """

    def __init__(self, initramfs: Path, cache_root: Path) -> None:
        self.initramfs = initramfs
        self.cache_root = cache_root
        self.cache_dir = cache_root / "userland"  # set by prepare()
        self.lower = self.cache_dir / "image"
        self.layer = self.cache_dir / "lab"

    def prepare(self) -> None:
        """Unpack the initramfs and write the lab's layer, unless already done for it."""
        data = self.initramfs.read_bytes()
        layer = "".join(f"{rel} {mode:o}\n{text}" for rel, text, mode in LAB_LAYER).encode()
        digest = hashlib.sha256(data + layer).hexdigest()[:16]
        self.cache_dir = self.cache_root / f"userland-{digest}"
        self.lower = self.cache_dir / "image"
        self.layer = self.cache_dir / "lab"
        if (self.cache_dir / "ready").is_file():
            return
        self.cache_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".userland-", dir=self.cache_root))
        try:
            _unpack_cpio(data, work / "image")
            for rel, text, mode in LAB_LAYER:
                path = work / "lab" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                path.chmod(mode)
            for root in (work / "image", work / "lab"):
                for dirpath, dirnames, filenames in os.walk(root):
                    os.lchown(dirpath, HOST_ID, HOST_ID)
                    for name in dirnames + filenames:
                        os.lchown(os.path.join(dirpath, name), HOST_ID, HOST_ID)
            (work / "ready").write_text(digest + "\n")
            work.chmod(0o755)
            try:
                work.rename(self.cache_dir)
            except OSError:
                if not (self.cache_dir / "ready").is_file():
                    raise  # not another lab's unpacking that won: a real failure
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def command(
        self,
        userns_fd: int,
        hostname: str,
        password_fd: int,
        console: str,
        *,
        kmsg: Path = Path("/dev/null"),
        init: tuple[str, ...] | None = None,
    ) -> list[str]:
        """The command line of one guest: ``kmsg`` is the file the emulated kernel's log is
        kept in, read-only at ``/dev/kmsg`` inside (``init``: what runs instead of init, to
        probe)."""
        limits = [f"--{name}={value}" for name, value in LIMITS.items()]
        guest = GUEST.format(size=TMPFS_SIZE, caps=KEEP_CAPS.replace(",", ",+"))
        if init is not None:
            guest = guest.rsplit("exec setpriv", 1)[0] + "exec " + " ".join(init) + "\n"
        return [
            "prlimit",
            *limits,
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            STAGE,
            "stage",
            str(self.lower),
            str(self.layer),
            str(kmsg),
            "nsenter",
            f"--user=/proc/self/fd/{userns_fd}",
            "--setuid",
            "0",
            "--setgid",
            "0",
            "--",
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            "unshare",
            "--mount",
            "--pid",
            "--uts",
            "--ipc",
            "--net",
            "--fork",
            "--kill-child",
            "--",
            "sh",
            "-c",
            guest,
            "guest",
            hostname,
            str(password_fd),
            console,
            texts.cmdline(hostname),
            texts.LINUX_VERSION,
        ]


def _unpack_cpio(data: bytes, dest: Path) -> None:
    """Unpack a newc cpio archive (directories, files, symlinks; device nodes skipped)."""
    dest.mkdir(parents=True)
    pos = 0
    while pos + 110 <= len(data):
        header = data[pos : pos + 110]
        if header[:6] != b"070701":
            raise SandboxError(f"{dest}: not a newc cpio archive at byte {pos}")
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos : pos + name_size - 1].decode()
        pos = (pos + name_size + 3) & ~3
        body = data[pos : pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return
        path = dest / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise SandboxError(f"{dest}: unsafe path {name!r} in the initramfs")
        if stat.S_ISDIR(mode):
            path.mkdir(parents=True, exist_ok=True)
        elif stat.S_ISLNK(mode):
            path.symlink_to(body.decode())
        elif stat.S_ISREG(mode):
            path.write_bytes(body)
        else:
            continue
        if not stat.S_ISLNK(mode):
            path.chmod(stat.S_IMODE(mode))


class Sandbox:
    """One run of a guest's userland: its process tree and the PTY it runs on.

    ``on_output(bytes)`` gets what the userland writes on its console; ``on_exit(status)``
    gets init's end: ``"reboot"`` (reboot(2) asked a restart), ``"poweroff"`` (power off or
    halt), or ``"died"`` with the exit code (init died: the kernel panics). Input is
    written with ``write``; ``pause_output``/``resume_output`` apply backpressure.
    ``kill()`` ends the whole tree at once; after ``kill`` no callback is called.
    """

    def __init__(
        self,
        image: UserlandImage,
        hostname: str,
        password: str,
        *,
        on_output: Callable[[bytes], None],
        on_exit: Callable[[str, int], None],
        on_input_taken: Callable[[], None] = lambda: None,
        kmsg: Path = Path("/dev/null"),
    ) -> None:
        self.image = image
        self.kmsg = kmsg
        self.hostname = hostname
        self._password = password
        self._on_output = on_output
        self._on_exit = on_exit
        self._on_input_taken = on_input_taken
        self._flush_handle: asyncio.Handle | None = None
        self._loop = asyncio.get_running_loop()
        self._master = -1
        self._process: asyncio.subprocess.Process | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._input = bytearray()
        self._reading = False
        self._writing = False
        self._dead = False
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        """The host pid of the tree's root (util-linux's unshare, init's parent)."""
        return self._process.pid if self._process is not None else None

    def init_pid(self) -> int | None:
        """The host pid of the guest's init (PID 1 inside), once it runs."""
        if self._process is None:
            return None
        children = _children(self._process.pid)
        return children[0] if children else None

    async def start(self) -> None:
        """Make the namespaces and start init. Raises SandboxError when it cannot."""
        self.started_at = self._loop.time()
        master, slave = os.openpty()
        try:
            attrs = termios.tcgetattr(slave)
            attrs[0] |= termios.ICRNL  # a terminal's defaults; getty sets the rest
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            os.fchown(slave, HOST_ID, HOST_ID)
            os.fchmod(slave, 0o600)
            console = os.ttyname(slave)
            os.set_blocking(master, False)
            userns = await asyncio.to_thread(_user_namespace)
            r, w = os.pipe()
            os.write(w, self._password.encode() + b"\n")
            os.close(w)
            r = _high_fd(r)
            os.fchown(r, HOST_ID, HOST_ID)  # read by the guest's root, as /proc/self/fd/N
            try:
                argv = self.image.command(userns, self.hostname, r, console, kmsg=self.kmsg)
                self._process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    pass_fds=(userns, r),
                    start_new_session=True,
                )
            finally:
                os.close(r)
                os.close(userns)
        except (OSError, subprocess.SubprocessError) as err:
            os.close(master)
            raise SandboxError(f"cannot start the guest's userland: {err}") from err
        finally:
            os.close(slave)
        self._master = master
        self._waiter = asyncio.ensure_future(self._wait())
        if self._dead:  # killed while it started: end what was just made
            self._dead = False
            self.kill()
            return
        self.resume_output()
        self._flush_input()

    def write(self, data: bytes) -> None:
        """Typed bytes for the guest's console (kept in order until its tty takes them).

        They are handed over a little at a time, and only while the tty's output (its echo)
        is being read: a tty whose echo cannot be written drops it. ``input_room()`` says
        when the caller should stop reading its own input; ``on_input_taken`` when the
        tty took some.
        """
        if self._dead:
            return
        room = INPUT_LIMIT - len(self._input)
        self._input += data[: max(room, 0)]
        if self._master >= 0:
            self._flush_input()

    def input_room(self) -> bool:
        """False while enough typed bytes wait here for the guest's tty to take them."""
        return len(self._input) < INPUT_HIGH

    def pause_output(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._master)
            self._reading = False

    def resume_output(self) -> None:
        if not self._reading and not self._dead and self._master >= 0:
            self._loop.add_reader(self._master, self._readable)
            self._reading = True
            self._flush_input()

    def signal_init(self, sig: int) -> bool:
        """Send ``sig`` to the guest's init; False when no init catches it yet (the kernel
        drops a signal that PID 1 of a namespace does not catch)."""
        pid = self.init_pid()
        if pid is None or not _catches(pid, sig):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return True

    def signal_tasks(self, sig: int) -> None:
        """Send ``sig`` to every process of the guest but init (SysRq e, i)."""
        pid = self.init_pid()
        if pid is None:
            return
        todo = _children(pid)
        while todo:
            child = todo.pop()
            todo.extend(_children(child))
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)

    def kill(self) -> None:
        """End the tree at once (its PID namespace dies with init); no callback follows."""
        if self._dead:
            return
        self._dead = True
        if self._process is not None and self._process.returncode is None:
            pid = self.init_pid()
            for target in (pid, self._process.pid):
                if target is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(target, signal.SIGKILL)
        self._close()

    # -- inside ------------------------------------------------------------------------

    def _close(self) -> None:
        self.pause_output()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._writing:
            self._loop.remove_writer(self._master)
            self._writing = False
        if self._master >= 0:
            os.close(self._master)
            self._master = -1

    def _readable(self) -> None:
        try:
            data = os.read(self._master, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: every holder of the console is gone
            self.pause_output()
            return
        if data:
            self._on_output(data)
        if self._input:
            self._flush_input()

    def _unread_output(self) -> int:
        poller = select.poll()
        poller.register(self._master, select.POLLIN)
        poller.poll(0)  # pushes the tty's flip buffer, which FIONREAD alone would miss
        raw = fcntl.ioctl(self._master, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])

    def _flush_input(self) -> None:
        """Hand the tty a chunk of typed input if its echo has somewhere to go; the next
        chunk after the loop's next turn (reads come between), a read, or room to write."""
        if not self._input or self._dead or self._master < 0 or self._writing:
            return
        if self._flush_handle is not None or not self._reading:
            return  # a turn is scheduled, or the output is paused (resume_output flushes)
        if self._unread_output() > ECHO_ROOM:
            return  # _readable flushes after reading
        try:
            sent = os.write(self._master, self._input[:INPUT_CHUNK])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._input.clear()
            return
        if sent == 0:
            self._loop.add_writer(self._master, self._on_writable)
            self._writing = True
            return
        del self._input[:sent]
        self._on_input_taken()
        if self._input:
            self._flush_handle = self._loop.call_soon(self._flush_turn)

    def _flush_turn(self) -> None:
        self._flush_handle = None
        self._flush_input()

    def _on_writable(self) -> None:
        self._loop.remove_writer(self._master)
        self._writing = False
        self._flush_input()

    async def _wait(self) -> None:
        assert self._process is not None
        code = await self._process.wait()
        if self._dead:
            return
        # What init printed last reaches the console before the kernel's next line.
        while self._reading:
            try:
                data = os.read(self._master, READ_SIZE)
            except OSError:
                break
            if not data:
                break
            self._on_output(data)
        self._dead = True
        self._close()
        # unshare re-raises the signal that ended init: reboot(2) in a PID namespace ends
        # its init with SIGHUP (restart) or SIGINT (power off, halt).
        if code == -signal.SIGHUP:
            self._on_exit("reboot", code)
        elif code == -signal.SIGINT:
            self._on_exit("poweroff", code)
        else:
            self._on_exit("died", code)


def _catches(pid: int, sig: int) -> bool:
    """True when process ``pid`` is init by now (not the shell steps before it, whose
    blocked signals would be dropped once they run on) and takes ``sig``: it has a
    handler for it, blocks it (to wait for it), or waits for signals now (``sigtimedwait``,
    which unblocks them)."""
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() != "init":
            return False
        status = Path(f"/proc/{pid}/status").read_text()
        waiting = "sigtimedwait" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
    masks = 0
    for line in status.splitlines():
        if line.startswith(("SigBlk:", "SigCgt:")):
            masks |= int(line.split()[1], 16)
    return waiting or bool(masks & (1 << (sig - 1)))


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]
