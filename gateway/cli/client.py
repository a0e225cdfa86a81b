"""An async client for the gateway's REST routes (ARM-shaped), over httpx.

``GatewayClient(url, token, subscription_id)`` is an async context manager. Each method
is one route; every error answer becomes a ``GatewayError`` whose message is the one line
the user reads: ARM's ``{"error": {"code", "message"}}`` message, or OAuth's
``error_description``. A refused token (401) becomes ``NotLoggedIn``; a gateway that does
not answer becomes ``GatewayUnreachable`` naming the URL and what to do. HTTPS is always
verified: against the system's CAs plus the lab CA given as ``ca_pem`` (``ssl``, which the
console websocket uses too).
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from gateway.cli.advice import SCALE_SET_WITHOUT_INSTANCE
from gateway.cli.errors import GatewayError, GatewayUnreachable, NotLoggedIn
from gateway.cli.trust import ssl_context, untrusted_hint

API_VERSION = "2024-07-01"
# ARM wants an api-version its provider publishes: the last namespace in the path decides.
API_VERSIONS = {
    "Microsoft.SerialConsole": "2024-07-01",
    "Microsoft.Compute": "2024-07-01",
}
RESOURCES_API_VERSION = "2022-12-01"  # subscriptions, tenants (Microsoft.Resources)
DEFAULT_TIMEOUT = 30.0
# Power actions answer when the machine is done: a graceful restart can take a while.
POWER_TIMEOUT = 180.0
POWER_ACTIONS = {
    "start": "start",
    "stop": "powerOff",
    "restart": "restart",
    "deallocate": "deallocate",
}


def admin_command_url(connection_string: str, command: str) -> str:
    """The HTTP URL of an admin command beside the console ``connection_string``:
    ws -> http, wss -> https, the final ``/client`` -> ``/adminCommand/{command}``."""
    parts = urlsplit(connection_string)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path
    if not path.endswith("/client"):
        raise GatewayError(f"The gateway answered an unexpected console URL: {connection_string}")
    path = path[: -len("client")] + f"adminCommand/{command}"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _untrusted(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is a failed certificate verification."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(err)


def api_version(path: str) -> str | None:
    """The ``api-version`` for an ARM ``path`` (None for the lab's other paths)."""
    if not path.startswith(("/subscriptions", "/providers", "/tenants")):
        return None
    parts = path.split("/")
    namespaces = [parts[i + 1] for i, part in enumerate(parts[:-1]) if part == "providers"]
    if namespaces:
        return API_VERSIONS.get(namespaces[-1], API_VERSION)
    return RESOURCES_API_VERSION


def _other_scheme(url: str, err: httpx.HTTPError) -> str:
    """``https`` when plain HTTP was cut off by a server that (likely) speaks TLS, ``http``
    when a TLS handshake met a plain-HTTP server; "" for any other failure."""
    # A TLS server closes on a plain request: a clean close (no response), or a reset when
    # the request was still unread, depending on timing.
    if url.startswith("http://") and isinstance(err, httpx.RemoteProtocolError | httpx.ReadError):
        return "https"
    text = str(err)
    if (
        url.startswith("https://")
        and isinstance(err, httpx.ConnectError)
        and ("WRONG_VERSION_NUMBER" in text or "record layer failure" in text)
    ):
        return "http"
    return ""


def error_message(response: httpx.Response) -> tuple[str, str]:
    """The (code, message) of an error answer, from its ARM or OAuth body when it has one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error.get("code", "")), str(error["message"])
        if isinstance(error, str):
            return error, str(body.get("error_description") or error)
    text = response.text.strip().splitlines()
    detail = f": {text[0][:200]}" if text else ""
    return "", f"The gateway answered HTTP {response.status_code}{detail}"


class GatewayClient:
    """The gateway at ``url``, as ``token``'s user, in subscription ``subscription_id``.

    Use ``async with``. ``token`` and ``subscription_id`` may be empty for ``login`` and
    ``subscriptions``; other methods need them. ``ca_pem`` is the lab CA to trust besides
    the system's. ``transport`` replaces the network in tests.
    """

    def __init__(
        self,
        url: str,
        token: str = "",
        subscription_id: str = "",
        *,
        ca_pem: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.subscription_id = subscription_id
        self.ssl: ssl.SSLContext = ssl_context(ca_pem)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            self._http = httpx.AsyncClient(
                base_url=self.url,
                headers=headers,
                timeout=timeout,
                transport=transport,
                verify=self.ssl,
            )
        except httpx.InvalidURL as err:
            raise GatewayError(
                f"{url} is not a usable lab URL ({err}): give one such as http://127.0.0.1:8400"
            ) from err

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    # -- plumbing ---------------------------------------------------------------------

    async def _request(
        self, method: str, path: str | httpx.URL, *, anonymous: bool = False, **kwargs: Any
    ) -> httpx.Response:
        version = api_version(path) if isinstance(path, str) else None
        if version is not None:
            kwargs["params"] = {**(kwargs.get("params") or {}), "api-version": version}
        request = self._http.build_request(method, path, **kwargs)
        if anonymous:
            request.headers.pop("Authorization", None)
        try:
            response = await self._http.send(request)
        except httpx.TimeoutException as err:
            raise GatewayUnreachable(
                f"The lab at {self.url} did not answer in time ({type(err).__name__}); "
                "check that it is running (serial-console lab run) and try again"
            ) from err
        except httpx.HTTPError as err:
            if _untrusted(err):
                raise GatewayUnreachable(untrusted_hint(self.url)) from err
            other = _other_scheme(self.url, err)
            if other:
                raise GatewayUnreachable(
                    f"The lab at {self.url} does not speak {self.url.split(':')[0]} "
                    f"({err or type(err).__name__}): a lab run "
                    f"{'with' if other == 'https' else 'without'} --tls is at "
                    f"{other}{self.url[self.url.index(':') :]}"
                ) from err
            raise GatewayUnreachable(
                f"Cannot reach the lab at {self.url} ({err or type(err).__name__}): start it "
                "with serial-console lab run, or point --url / SERIAL_CONSOLE_URL at it"
            ) from err
        if response.status_code >= 400:
            code, message = error_message(response)
            if response.status_code == 401 and self.token:
                raise NotLoggedIn(
                    f"The lab at {self.url} refused the stored token ({code})", self.url
                )
            raise GatewayError(message, status=response.status_code, code=code)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as err:
            raise GatewayError(
                f"The gateway answered {method} {path} with something that is not JSON"
            ) from err

    def _subscription(self) -> str:
        return f"/subscriptions/{self.subscription_id}"

    def machine_path(self, group: str, name: str, instance_id: str | None = None) -> str:
        """The ARM path of VM ``name``, or of instance ``instance_id`` of scale set ``name``."""
        base = f"{self._subscription()}/resourceGroups/{group}/providers/Microsoft.Compute"
        if instance_id is not None:
            return f"{base}/virtualMachineScaleSets/{name}/virtualMachines/{instance_id}"
        return f"{base}/virtualMachines/{name}"

    # -- identity ---------------------------------------------------------------------

    async def login(self, username: str, password: str) -> tuple[str, int]:
        """A token for ``username``: (access_token, seconds it is valid)."""
        body = await self._json(
            "POST",
            "/oauth2/token",
            data={"grant_type": "password", "username": username, "password": password},
        )
        try:
            return str(body["access_token"]), int(body["expires_in"])
        except (KeyError, TypeError, ValueError) as err:
            raise GatewayError("The gateway's token answer lacks access_token") from err

    async def subscriptions(self) -> list[dict[str, Any]]:
        """The subscriptions the caller holds a role in."""
        body = await self._json("GET", "/subscriptions")
        return list(body.get("value", []))

    # -- virtual machines -------------------------------------------------------------

    async def get_machine(
        self, group: str, name: str, instance_id: str | None = None
    ) -> dict[str, Any]:
        """A VM or scale-set instance with its instance view.

        Naming a scale set without ``instance_id`` raises ARM's 404 with az's advice to
        use ``--instance-id``.
        """
        path = self.machine_path(group, name, instance_id)
        try:
            body: dict[str, Any] = await self._json("GET", path, params={"$expand": "instanceView"})
        except GatewayError as err:
            await self._scale_set_hint(err, group, name, instance_id)
            raise
        return body

    async def _scale_set_hint(
        self, err: GatewayError, group: str, name: str, instance_id: str | None
    ) -> None:
        """Raise ``err`` with az's --instance-id advice when it is a 404 for a scale set's
        name (code ``IsScaleSet``)."""
        if err.status == 404 and instance_id is None and await self._is_scale_set(group, name):
            # az's way: ARM's "not found", then what to do about it.
            raise GatewayError(
                str(err),
                status=err.status,
                code="IsScaleSet",
                recommendation=SCALE_SET_WITHOUT_INSTANCE,
            ) from err

    async def _is_scale_set(self, group: str, name: str) -> bool:
        path = (
            f"{self._subscription()}/resourceGroups/{group}/providers/Microsoft.Compute"
            f"/virtualMachineScaleSets/{name}"
        )
        try:
            await self._request("GET", path)
        except GatewayError:
            return False
        return True

    async def list_vms(self, group: str | None = None) -> list[dict[str, Any]]:
        """VMs of the subscription (or of ``group``), each with its instance view."""
        if group is None:
            path = f"{self._subscription()}/providers/Microsoft.Compute/virtualMachines"
        else:
            path = (
                f"{self._subscription()}/resourceGroups/{group}"
                "/providers/Microsoft.Compute/virtualMachines"
            )
        body = await self._json("GET", path, params={"$expand": "instanceView"})
        return list(body.get("value", []))

    async def power(
        self, action: str, group: str, name: str, instance_id: str | None = None
    ) -> dict[str, Any]:
        """Run power ``action`` (start, stop, restart, deallocate) and wait for it, as ARM's
        long-running operation (202, then its Azure-AsyncOperation status until final);
        the final status. A failed operation raises GatewayError with its message."""
        path = self.machine_path(group, name, instance_id) + "/" + POWER_ACTIONS[action]
        response = await self._request("POST", path, timeout=POWER_TIMEOUT)
        status_url = response.headers.get("Azure-AsyncOperation")
        if response.status_code != 202 or not status_url:
            body: dict[str, Any] = response.json()
            return body
        try:
            async with asyncio.timeout(POWER_TIMEOUT):
                while True:
                    body = (await self._request("GET", httpx.URL(status_url))).json()
                    if body.get("status") != "InProgress":
                        break
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
        except TimeoutError as err:
            raise GatewayError(
                f"The {action} operation did not finish within {POWER_TIMEOUT:.0f} s; the VM "
                "may still get there: check it with serial-console vm list"
            ) from err
        if body.get("status") != "Succeeded":
            error = body.get("error") or {}
            raise GatewayError(
                str(error.get("message") or f"The {action} operation {body.get('status')}"),
                code=str(error.get("code", "")),
            )
        return body

    # -- the console ------------------------------------------------------------------

    async def connect(self, group: str, name: str, instance_id: str | None = None) -> str:
        """A new one-time websocket URL to the machine's serial console."""
        path = (
            self.machine_path(group, name, instance_id)
            + "/providers/Microsoft.SerialConsole/serialPorts/0/connect"
        )
        try:
            body = await self._json("POST", path)
        except GatewayError as err:
            await self._scale_set_hint(err, group, name, instance_id)
            raise
        url = body.get("connectionString") if isinstance(body, dict) else None
        if not isinstance(url, str):
            raise GatewayError("The gateway's connect answer lacks connectionString")
        return url

    async def admin_command(
        self, connection_string: str, command: str, parameters: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Send ``command`` (nmi, reset, sysrq) beside the console session; its answer."""
        body: dict[str, Any] = await self._json(
            "POST",
            admin_command_url(connection_string, command),
            json={
                "command": command,
                "requestId": str(uuid.uuid4()),
                "commandParameters": parameters or {},
            },
            timeout=POWER_TIMEOUT,
        )
        return body

    async def console_service(self) -> dict[str, Any]:
        """The subscription's console service: ``{"properties": {"disabled": ...}}``."""
        path = f"{self._subscription()}/providers/Microsoft.SerialConsole/consoleServices/default"
        body: dict[str, Any] = await self._json("GET", path)
        return body

    async def set_console(self, enabled: bool) -> dict[str, Any]:
        """Enable or disable the serial console for the whole subscription; the new state."""
        verb = "enableConsole" if enabled else "disableConsole"
        path = (
            f"{self._subscription()}/providers/Microsoft.SerialConsole"
            f"/consoleServices/default/{verb}"
        )
        body: dict[str, Any] = await self._json("POST", path)
        return body

    # -- boot diagnostics -------------------------------------------------------------

    async def boot_log_url(self, group: str, name: str, instance_id: str | None = None) -> str:
        """A signed URL to the machine's serial log (``retrieveBootDiagnosticsData``)."""
        path = self.machine_path(group, name, instance_id) + "/retrieveBootDiagnosticsData"
        body = await self._json("POST", path)
        url = body.get("serialConsoleLogBlobUri") if isinstance(body, dict) else None
        if not isinstance(url, str):
            raise GatewayError(
                "The gateway's boot diagnostics answer lacks serialConsoleLogBlobUri"
            )
        return url

    async def read_boot_log(self, url: str, start: int | None = None) -> dict[str, Any]:
        """One page of the serial log at signed ``url`` from byte ``start`` (None: the
        oldest kept): ``contents``, ``start``, ``next``, ``rotated`` and maybe ``warning``."""
        blob = httpx.URL(url)  # the blob itself; its pages (same se and sig) are JSON
        target = blob.copy_with(path=blob.path + "/pages")
        if start is not None:  # merged: params= would drop the signature's se and sig
            target = target.copy_merge_params({"start": str(start)})
        # The signed URL is its own credential: no bearer token goes with it.
        response = await self._request("GET", target, anonymous=True)
        try:
            body: dict[str, Any] = response.json()
        except ValueError as err:
            raise GatewayError("The serial log answer is not JSON") from err
        return body
