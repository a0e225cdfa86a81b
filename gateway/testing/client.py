"""A blocking client of a running lab, for tests: sign-in, consoles, power states, boot logs.

``LabClient(url, user, password)`` signs in once and speaks the lab's public doors only, as
the CLI does: REST (through ``gateway.cli.client.GatewayClient``) and the framed websocket
console. Its calls block the caller; the I/O runs on an event loop in a thread of its own,
so a test may call them from a plain function or from inside an async test alike.

Exceptions::

    LabClientError   the lab refused or did not answer; the message says what to do
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from gateway.cli.client import GatewayClient
from gateway.cli.errors import CliError
from gateway.testing.timeouts import scaled

T = TypeVar("T")
POWER_PREFIX = "PowerState/"


class LabClientError(AssertionError):
    """The lab refused a request or did not answer; the message says what to do."""


async def _cancel_all() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class LoopThread:
    """An event loop running in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="lab-io")
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """The result of ``coro`` run on the loop; TimeoutError after ``timeout`` seconds."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        """Cancel what still runs on the loop (consoles never closed), then stop it."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.run(_cancel_all(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class LabClient:
    """The lab at ``url``, as ``user``: signed in on creation (raises LabClientError)."""

    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        *,
        ca_path: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self.ca_pem = ca_path.read_text() if ca_path is not None else ""
        self.timeout = scaled(timeout)
        self.io = LoopThread()
        try:
            self.token, self.subscription_id = self.io.run(self._sign_in(password), self.timeout)
        except BaseException:
            self.io.close()
            raise

    def close(self) -> None:
        self.io.close()

    async def _sign_in(self, password: str) -> tuple[str, str]:
        async with GatewayClient(self.url, ca_pem=self.ca_pem) as anonymous:
            token, _ = await self._call(anonymous.login(self.user, password), "sign in")
        async with GatewayClient(self.url, token, ca_pem=self.ca_pem) as signed:
            subscriptions = await self._call(signed.subscriptions(), "list subscriptions")
        if not subscriptions:
            raise LabClientError(
                f"{self.user} holds no role in any subscription of the lab at {self.url}: "
                "give the plugin a user with one (--lab-user)"
            )
        return token, str(subscriptions[0]["subscriptionId"])

    async def _call(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        try:
            return await coro
        except CliError as err:
            raise LabClientError(f"{what} at {self.url} as {self.user}: {err}") from None

    def gateway(self) -> GatewayClient:
        """A GatewayClient signed in as this user (use on ``io.loop``, in ``async with``)."""
        return GatewayClient(self.url, self.token, self.subscription_id, ca_pem=self.ca_pem)

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """``GatewayClient.<method>(*args)`` as this user, waited for."""

        async def one() -> Any:
            async with self.gateway() as client:
                return await self._call(getattr(client, method)(*args), method.replace("_", " "))

        return self.io.run(one(), timeout or self.timeout)

    # -- what tests ask ------------------------------------------------------------------

    def vms(self) -> list[dict[str, Any]]:
        """Every VM of the subscription, with its instance view (scale sets' instances
        are not VMs here; see ``power_state`` with ``instance``)."""
        result: list[dict[str, Any]] = self.call("list_vms")
        return result

    def group_of(self, vm: str) -> str:
        """The resource group of VM or scale set ``vm``: the only one, or the one holding
        a VM of that name."""
        for item in self.vms():
            if item["name"].lower() == vm.lower():
                return str(item["id"].split("/")[4])
        groups = {item["id"].split("/")[4] for item in self.vms()}
        if len(groups) == 1:
            return groups.pop()
        return "lab-rg"

    def power_state(self, vm: str, instance: int | None = None, group: str | None = None) -> str:
        """The power state the instance view reports (``running``, ``panicked``, ...)."""
        body = self.call(
            "get_machine",
            group or self.group_of(vm),
            vm,
            None if instance is None else str(instance),
        )
        statuses = (body.get("properties", {}).get("instanceView") or {}).get("statuses", [])
        for status in statuses:
            code = str(status.get("code", ""))
            if code.startswith(POWER_PREFIX):
                return code[len(POWER_PREFIX) :]
        raise LabClientError(f"the lab reported no power state for {vm}: {body}")

    def boot_log(self, vm: str, instance: int | None = None, group: str | None = None) -> str:
        """The boot-diagnostics serial log of ``vm`` as kept (the newest bytes), as text."""

        async def read() -> str:
            async with self.gateway() as client:
                url = await self._call(
                    client.boot_log_url(
                        group or self.group_of(vm), vm, None if instance is None else str(instance)
                    ),
                    "boot diagnostics",
                )
                pages: list[str] = []
                start: int | None = None
                while True:
                    page = await self._call(client.read_boot_log(url, start), "boot log")
                    pages.append(str(page.get("contents", "")))
                    following = page.get("next")
                    if not page.get("contents") or following is None or following == start:
                        return "".join(pages)
                    start = int(following)

        return self.io.run(read(), self.timeout)
