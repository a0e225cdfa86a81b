"""ARM's routing rules, applied once to every request before the routes see it.

Azure Resource Manager matches the fixed words of a path (``resourceGroups``, provider
namespaces, resource types, actions) without regard to case, and demands an
``api-version`` that the provider behind the path publishes. ``ArmRouting`` (ASGI
middleware) does both for every path under ``/subscriptions``, ``/providers`` and
``/tenants``:

- ``canonical_path`` rewrites the fixed words to the spelling the routes declare
  (``/resourcegroups/`` -> ``/resourceGroups/``, ``microsoft.compute`` ->
  ``Microsoft.Compute``), leaving names (subscription, group, VM) as sent: the inventory
  looks those up case-insensitively;
- the provider is the last namespace of the path (``.../virtualMachines/vm/providers/
  Microsoft.SerialConsole/serialPorts`` is Microsoft.SerialConsole's); paths without one
  (``/subscriptions``, resource groups, ``/tenants``) are Microsoft.Resources';
- a missing ``api-version`` is ARM's 400 ``MissingApiVersionParameter``; one the
  provider does not publish is ARM's 400 ``InvalidApiVersionParameter`` naming those it
  does.

The versions are those of the providers' published REST specifications
(Azure/azure-rest-api-specs, ``specification/<service>/resource-manager``): what the
current SDKs and ``az`` send is in them.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

SERIAL_CONSOLE = "Microsoft.SerialConsole"
COMPUTE = "Microsoft.Compute"
RESOURCES = "Microsoft.Resources"
AUTHORIZATION = "Microsoft.Authorization"

# Newest first, as ARM lists them in its error message.
API_VERSIONS: dict[str, tuple[str, ...]] = {
    # stable/2018-05-01, 2023-01-01, 2024-07-01 and preview/2018-07-01-preview.
    SERIAL_CONSOLE: ("2024-07-01", "2023-01-01", "2018-07-01-preview", "2018-05-01"),
    # ComputeRP (virtual machines, scale sets and their instances, operations), with the
    # versions of the other Microsoft.Compute specs that azure-mgmt-compute sends
    # (galleries 2026-03-03, 2025-03-03; disks 2026-03-02, 2025-12-03; skus 2021-07-01).
    COMPUTE: (
        "2026-04-01",
        "2026-03-03",
        "2026-03-02",
        "2025-12-03",
        "2025-11-01",
        "2025-04-01",
        "2025-03-03",
        "2025-01-02",
        "2024-11-04",
        "2024-11-01",
        "2024-07-01",
        "2024-03-03",
        "2024-03-02",
        "2024-03-01",
        "2023-10-02",
        "2023-09-01",
        "2023-07-03",
        "2023-07-01",
        "2023-04-02",
        "2023-03-01",
        "2023-01-02",
        "2022-11-01",
        "2022-08-01",
        "2022-07-02",
        "2022-04-04",
        "2022-03-03",
        "2022-03-02",
        "2022-03-01",
        "2022-01-03",
        "2021-12-01",
        "2021-11-01",
        "2021-10-01",
        "2021-08-01",
        "2021-07-01",
        "2021-04-01",
        "2021-03-01",
        "2020-12-01",
        "2020-06-01",
        "2019-12-01",
        "2019-07-01",
        "2019-03-01",
        "2018-10-01",
        "2018-06-01",
        "2018-04-01",
        "2017-12-01",
        "2017-03-30",
        "2016-04-30-preview",
        "2016-03-30",
        "2015-06-15",
    ),
    # Permissions (what the portal asks to grey out what a role does not allow).
    AUTHORIZATION: ("2022-04-01", "2018-07-01", "2018-01-01-preview", "2015-07-01"),
    # Subscriptions and tenants (2016-06-01 to 2022-12-01) and resource groups (to 2025-04-01).
    RESOURCES: (
        "2025-04-01",
        "2024-11-01",
        "2024-07-01",
        "2024-03-01",
        "2023-07-01",
        "2022-12-01",
        "2022-09-01",
        "2021-04-01",
        "2021-01-01",
        "2020-10-01",
        "2020-08-01",
        "2020-06-01",
        "2020-01-01",
        "2019-11-01",
        "2019-10-01",
        "2019-08-01",
        "2019-07-01",
        "2019-06-01",
        "2019-05-10",
        "2019-05-01",
        "2019-03-01",
        "2018-06-01",
        "2018-05-01",
        "2018-02-01",
        "2017-05-10",
        "2016-09-01",
        "2016-07-01",
        "2016-06-01",
        "2016-02-01",
        "2015-11-01",
    ),
}

_NAMESPACES = {name.lower(): name for name in API_VERSIONS}

# The fixed words of the paths this gateway serves, in the routes' spelling.
_WORDS = {
    word.lower(): word
    for word in (
        "subscriptions",
        "resourceGroups",
        "providers",
        "tenants",
        "locations",
        "operations",
        "virtualMachines",
        "virtualMachineScaleSets",
        "serialPorts",
        "consoleServices",
        "auditLogs",
        "instanceView",
        "connect",
        "sessions",
        "recording",
        "start",
        "powerOff",
        "restart",
        "deallocate",
        "reimage",
        "retrieveBootDiagnosticsData",
        "enableConsole",
        "disableConsole",
        "permissions",
    )
}
_ARM_ROOTS = frozenset({"subscriptions", "providers", "tenants"})

# The resource types each provider serves here (the first word after its namespace).
RESOURCE_TYPES: dict[str, frozenset[str]] = {
    SERIAL_CONSOLE: frozenset({"serialPorts", "consoleServices", "operations", "auditLogs"}),
    COMPUTE: frozenset({"virtualMachines", "virtualMachineScaleSets", "locations"}),
    AUTHORIZATION: frozenset({"permissions"}),
}

MISSING = "The api-version query parameter (?api-version=) is required for all requests."
INVALID = "The api-version '{version}' is invalid. The supported versions are '{supported}'."


def is_arm_path(path: str) -> bool:
    """True for the paths ARM's rules apply to (``/subscriptions...``, ``/providers...``,
    ``/tenants``)."""
    first = path.lstrip("/").split("/", 1)[0].lower()
    return first in _ARM_ROOTS


def canonical_path(path: str) -> tuple[str, str]:
    """``path`` with its fixed words in the routes' spelling, and the namespace of the
    provider that serves it (``Microsoft.Resources`` when the path names none).

    ARM paths alternate a word and a name (``/resourceGroups/{name}``), except that
    ``providers`` is followed by a namespace and then a word; a trailing word is an action
    or a collection. Only words are rewritten: a VM named ``Start`` stays ``Start``.
    """
    segments = path.split("/")
    expect = "word"
    provider = RESOURCES
    for i, segment in enumerate(segments[1:], start=1):
        if expect == "namespace":
            segment = _NAMESPACES.get(segment.lower(), segment)
            provider = segment
            expect = "word"
        elif expect == "word":
            segment = _WORDS.get(segment.lower(), segment)
            expect = "namespace" if segment == "providers" else "name"
        else:
            expect = "word"
        segments[i] = segment
    return "/".join(segments), provider


def check_api_version(provider: str, query: str) -> tuple[str, str] | None:
    """None when ``query`` carries an ``api-version`` that ``provider`` publishes;
    otherwise ARM's (code, message). A provider the lab does not know is left to the
    routes (they answer 404)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    versions = [value for key, value in pairs if key.lower() == "api-version"]
    if not versions or not versions[0]:
        return "MissingApiVersionParameter", MISSING
    supported = API_VERSIONS.get(provider)
    version = versions[0]
    if supported is None or version.lower() in supported:
        return None
    shown = version if len(version) <= 64 else version[:64] + "..."
    return "InvalidApiVersionParameter", INVALID.format(
        version=shown, supported=",".join(supported)
    )


def unknown_resource_type(path: str, version: str) -> str | None:
    """ARM's ``InvalidResourceType`` message when ``path`` names a type its provider does not
    serve here (``.../providers/Microsoft.Compute/disks/d``); None otherwise."""
    segments = canonical_path(path)[0].split("/")
    marks = [i for i, segment in enumerate(segments[:-2]) if segment == "providers"]
    if not marks:
        return None
    namespace, resource_type = segments[marks[-1] + 1], segments[marks[-1] + 2]
    known = RESOURCE_TYPES.get(namespace)
    if known is None or resource_type in known or not resource_type:
        return None
    shown = resource_type if len(resource_type) <= 64 else resource_type[:64] + "..."
    return (
        f"The resource type '{shown}' could not be found in the namespace '{namespace}' for "
        f"api version '{version[:64]}'."
    )


class ArmRouting:
    """ASGI middleware: ARM's case-insensitive paths and its ``api-version`` rule."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "//" in scope["path"]:
            # ARM reads a run of slashes as one: az joins "https://host/" and "/metadata"
            scope = dict(scope, path=re.sub("/{2,}", "/", scope["path"]))
        if scope["type"] != "http" or not is_arm_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        path, provider = canonical_path(scope["path"])
        problem = check_api_version(provider, scope.get("query_string", b"").decode("latin-1"))
        if problem is not None:
            await _send_error(send, 400, *problem)
            return
        scope = dict(scope, path=path)
        await self.app(scope, receive, send)


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
