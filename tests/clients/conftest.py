"""A lab over TLS for Microsoft's own Python packages, which are synchronous: the lab runs
on its own event loop in a thread (as ``serial-console lab run`` would in a terminal of
its own) and the tests call azure-identity, azure-mgmt-serialconsole and
azure-mgmt-compute as a user's script does.

``REQUESTS_CA_BUNDLE`` points at the lab's CA for the whole package: azure-core's transport
(requests) trusts it, as a user trusts the lab by exporting the same variable.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.lab.runtime import LabRuntime
from gateway.testing.timeouts import scaled
from tests.support.lab import EMULATED_VMS, SUBSCRIPTION, running_lab, scale_set

# Emulated guests: the test lab's Linux and Windows VMs, and a scale set of two.
CLIENT_LAB_VMS = EMULATED_VMS + scale_set(2)


@dataclass
class ClientLab:
    """The running lab as a client sees it, and its runtime (for assertions only)."""

    url: str
    ca_path: Path
    tenant_id: str
    subscription_id: str
    runtime: LabRuntime
    loop: asyncio.AbstractEventLoop

    def call(self, coro: object) -> object:
        """Run ``coro`` on the lab's loop (for a test's look at the lab's state)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(scaled(30))


class LabThread:
    """``running_lab(tls=True)`` on an event loop of its own, in a daemon thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lab: ClientLab | None = None
        self.error: BaseException | None = None
        self._up = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="client-lab", daemon=True)

    def start(self) -> ClientLab:
        self._thread.start()
        if not self._up.wait(scaled(60)):
            raise AssertionError("the lab did not start within its time")
        if self.error is not None:
            raise AssertionError(f"the lab failed to start: {self.error}") from self.error
        assert self.lab is not None
        return self.lab

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(scaled(60))
        assert not self._thread.is_alive(), "the lab did not stop within its time"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # reported to the test thread
            self.error = err
        finally:
            self._up.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running_lab(self.folder, tls=True, vms=CLIENT_LAB_VMS) as handle:
            runtime = handle.runtime
            assert runtime.ca_path is not None
            assert runtime.context is not None
            self.lab = ClientLab(
                url=runtime.url,
                ca_path=runtime.ca_path,
                tenant_id=runtime.context.inventory.tenant_id,
                subscription_id=SUBSCRIPTION,
                runtime=runtime,
                loop=self._loop,
            )
            self._up.set()
            await self._stop.wait()


@pytest.fixture(scope="package")
def client_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientLab]:
    """One TLS lab with emulated guests for the whole suite; its CA trusted by requests."""
    thread = LabThread(tmp_path_factory.mktemp("clients"))
    lab = thread.start()
    before = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(lab.ca_path)
    try:
        yield lab
    finally:
        if before is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = before
        thread.stop()
