"""Connections to libvirt hosts, shared by the machines of one process, and libvirt's event loop.

libvirt delivers its events (domain lifecycle, console stream data, keepalive) through an
event loop the program registers before it opens a connection. This module runs libvirt's
own implementation (``virEventRegisterDefaultImpl``) in one daemon thread for the process:
it waits in ``poll`` on libvirt's descriptors, so nothing is polled on a timer. The asyncio
adapter that libvirt-python ships (``libvirtaio``) is not used on purpose: it adds and
removes asyncio readers from whichever thread calls libvirt, and the machines make their
blocking calls (``createXML``, ``shutdown``...) from worker threads so that the event loop
serving every console never waits on a libvirt host. Callbacks run in the libvirt thread and
hand their work to the machine's event loop with ``call_soon_threadsafe``.

``LibvirtHost.acquire(uri)`` gives the connection to ``uri``, opened once and shared (each
acquire is matched by a ``release``; the last one closes it). Domains are started with
``VIR_DOMAIN_START_AUTODESTROY``: libvirtd destroys them when this connection closes, so a
lab that dies (even by ``kill -9``) leaves no guest behind on any host.

Exceptions: ``HostError`` (a ``MachineError``) when a host cannot be reached, with the URI,
libvirt's reason and what to check.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.machines.base import MachineError

try:
    import libvirt
except ImportError:  # pragma: no cover - the message below says what to install
    libvirt = None

log = logging.getLogger("serial_console_lab.machines.libvirt")

T = TypeVar("T")
LIFECYCLE = 0  # libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE
REBOOT = 1  # libvirt.VIR_DOMAIN_EVENT_ID_REBOOT
KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 3  # a host silent for ~20 s is lost
MISSING = (
    "the libvirt backend needs libvirt-python: pip install 'serial-console-lab[libvirt]' "
    "(it builds against the system's libvirt: apt-get install pkg-config libvirt-dev gcc)"
)

_event_thread: threading.Thread | None = None
_event_lock = threading.Lock()
_hosts: dict[str, LibvirtHost] = {}
_hosts_lock = threading.Lock()
# Blocking libvirt calls run here, not in asyncio's default pool (the boot logs' fsyncs).
_executor = concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix="libvirt-call")

DomainCallback = Callable[[int, Any, Any], None]  # (event id, event, detail)


class HostError(MachineError):
    """A libvirt host cannot be reached or refused the connection."""


def require_libvirt() -> Any:
    """The ``libvirt`` module; HostError saying what to install when it is missing."""
    if libvirt is None:
        raise HostError(MISSING)
    return libvirt


def is_local(uri: str) -> bool:
    """True for a URI whose daemon runs on this machine (``qemu:///system``): no host part."""
    return not urlsplit(uri).netloc


def _ensure_event_thread() -> None:
    global _event_thread
    with _event_lock:
        if _event_thread is not None:
            return
        require_libvirt().virEventRegisterDefaultImpl()
        # libvirt prints every error to stderr unless told otherwise; here each one is
        # raised (libvirtError) and said by the machine in its own words.
        libvirt.registerErrorHandler(lambda _ctx, _error: None, None)

        def run() -> None:
            while True:
                if libvirt.virEventRunDefaultImpl() < 0:  # pragma: no cover - libvirt broke
                    log.error("libvirt's event loop failed: %s", libvirt.virGetLastErrorMessage())

        _event_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_thread.start()


async def call(fn: Callable[..., T], *args: Any, timeout: float, what: str) -> T:
    """Run the blocking libvirt call ``fn(*args)`` in a worker thread; ``timeout`` s at most.

    libvirt's own error becomes ``MachineError``-family at the caller (it catches
    ``libvirt.libvirtError``); a call the host does not answer in time raises TimeoutError
    (the thread is left to finish: libvirt calls cannot be cancelled)."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_executor, lambda: fn(*args))
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(future)
    except TimeoutError:
        log.warning("libvirt did not answer %s within %.0f s", what, timeout)
        raise


class LibvirtHost:
    """One connection to a libvirt host, shared by every machine of this process on it."""

    def __init__(self, uri: str, conn: Any) -> None:
        self.uri = uri
        self.conn = conn
        self.users = 0
        self.closed_reason = ""
        self.driver = conn.getType()  # "QEMU" on a QEMU/KVM host
        self._domains: dict[str, DomainCallback] = {}
        self._lost: dict[str, Callable[[str], None]] = {}
        self._callbacks: list[int] = []
        for event in (LIFECYCLE, REBOOT):
            self._callbacks.append(
                conn.domainEventRegisterAny(None, event, self._on_domain_event, event)
            )
        conn.registerCloseCallback(self._on_close, None)

    @classmethod
    async def acquire(cls, uri: str, timeout: float) -> LibvirtHost:
        """The shared connection to ``uri``, opened now if needed. HostError if it fails."""
        require_libvirt()
        _ensure_event_thread()
        with _hosts_lock:
            host = _hosts.get(uri)
            if host is not None and not host.closed_reason:
                host.users += 1
                return host

        def connect() -> LibvirtHost:
            conn = libvirt.open(uri)
            try:
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
                return cls(uri, conn)
            except BaseException:
                conn.close()
                raise

        try:
            opened = await call(connect, timeout=timeout, what=f"a connection to {uri}")
        except TimeoutError:
            raise HostError(
                f"libvirt at {uri} did not answer within {timeout:.0f} s: check that libvirtd "
                "runs there and that the host is reachable"
            ) from None
        except libvirt.libvirtError as err:
            raise HostError(
                f"cannot connect to libvirt at {uri}: {err.get_error_message()}; check that "
                "libvirtd runs there (and, for qemu+ssh://, that ssh to that host works "
                "without a password)"
            ) from err
        with _hosts_lock:
            host = _hosts.get(uri)
            if host is not None and not host.closed_reason:  # another start won the race
                host.users += 1
                _executor.submit(opened._close)
                return host
            _hosts[uri] = opened
            opened.users = 1
            return opened

    async def release(self) -> None:
        """One user fewer; the last one closes the connection (in a worker thread), which
        makes libvirtd destroy whatever domain of this connection is left."""
        with _hosts_lock:
            self.users -= 1
            if self.users > 0:
                return
            if _hosts.get(self.uri) is self:
                del _hosts[self.uri]
        await asyncio.get_running_loop().run_in_executor(_executor, self._close)

    def watch(self, domain: str, on_event: DomainCallback, on_lost: Callable[[str], None]) -> None:
        """Call ``on_event(event id, event, detail)`` for domain ``domain``'s lifecycle and
        reboot events, and ``on_lost(reason)`` if the connection is lost; both are called in
        libvirt's thread."""
        self._domains[domain] = on_event
        self._lost[domain] = on_lost

    def unwatch(self, domain: str) -> None:
        self._domains.pop(domain, None)
        self._lost.pop(domain, None)

    def _on_domain_event(self, conn: Any, dom: Any, *args: Any) -> None:
        kind = args[-1]
        callback = self._domains.get(dom.name())
        if callback is None:
            return
        if kind == LIFECYCLE:
            callback(kind, args[0], args[1])
        else:
            callback(kind, None, None)

    def _on_close(self, conn: Any, reason: int, opaque: Any) -> None:
        why = {0: "an error", 1: "end of file", 2: "keepalive timeout", 3: "a client close"}
        self.closed_reason = (
            f"the connection to libvirt at {self.uri} was lost ({why.get(reason, reason)})"
        )
        log.error("%s", self.closed_reason)
        for lost in list(self._lost.values()):
            lost(self.closed_reason)

    def _close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            for callback in self._callbacks:
                self.conn.domainEventDeregisterAny(callback)
            self.conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.close()
