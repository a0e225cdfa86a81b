"""``GET /metadata/endpoints``: the cloud's endpoints, as Azure's resource manager serves them.

``az cloud register --endpoint-resource-manager URL`` reads
``URL/metadata/endpoints?api-version=2022-09-01`` (endpoint discovery) and takes from it
where to sign in, the token audience, the portal and the rest. The lab answers with itself
for everything it serves (resource manager, sign-in, portal) and Azure's public names for
what it does not (storage suffixes and the like, which az only needs to be set). No token
is needed: ARM serves this to anyone, so a client can find the sign-in endpoint first.

The shapes by ``api-version``, as ARM answers: ``2022-09-01`` the lab's cloud (one
object); ``2019-05-01`` and ``2020-06-01`` a list of clouds (the lab's alone);
``2015-01-01`` and ``2018-01-01`` the first format (``galleryEndpoint``,
``portalEndpoint``, ``authentication``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.api.errors import error_response
from gateway.lab.errors import ArmError

router = APIRouter(tags=["metadata"])

CLOUD_NAME = "SerialConsoleLab"
AUDIENCE = "https://management.core.windows.net/"  # Azure's public resource manager audience
VERSIONS = ("2022-09-01", "2020-06-01", "2019-05-01", "2018-01-01", "2015-01-01")


def cloud(base: str) -> dict[str, Any]:
    """The lab's cloud in ARM's 2022-09-01 shape; ``base`` is the lab's URL, with ``/``."""
    return {
        "name": CLOUD_NAME,
        "portal": base,
        "authentication": {
            "loginEndpoint": base,
            "audiences": [AUDIENCE, "https://management.azure.com/"],
            "tenant": "common",
            "identityProvider": "AAD",
        },
        "resourceManager": base,
        "gallery": "https://gallery.azure.com/",
        "graph": "https://graph.windows.net/",
        "graphAudience": "https://graph.windows.net/",
        "microsoftGraphResourceId": "https://graph.microsoft.com/",
        "media": "https://rest.media.azure.net",
        "batch": "https://batch.core.windows.net/",
        "sqlManagement": "https://management.core.windows.net:8443/",
        "activeDirectoryDataLake": "https://datalake.azure.net/",
        "vmImageAliasDoc": (
            "https://raw.githubusercontent.com/Azure/azure-rest-api-specs/main/arm-compute/"
            "quickstart-templates/aliases.json"
        ),
        "logAnalyticsResourceId": "https://api.loganalytics.io",
        "suffixes": {
            "acrLoginServer": "azurecr.io",
            "azureDataLakeAnalyticsCatalogAndJob": "azuredatalakeanalytics.net",
            "azureDataLakeStoreFileSystem": "azuredatalakestore.net",
            "keyVaultDns": "vault.azure.net",
            "mhsmDns": "managedhsm.azure.net",
            "sqlServerHostname": "database.windows.net",
            "storage": "core.windows.net",
        },
    }


@router.get(
    "/metadata/endpoints",
    summary="The cloud's endpoints (az cloud register's endpoint discovery)",
)
async def endpoints(request: Request) -> JSONResponse:
    version = request.query_params.get("api-version")
    if version is None:
        return error_response(
            ArmError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        )
    if version not in VERSIONS:
        return error_response(
            ArmError(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{version[:32]}' is invalid. The supported versions are "
                f"'{','.join(VERSIONS)}'.",
            )
        )
    base = str(request.base_url)
    if not base.endswith("/"):
        base += "/"
    this = cloud(base)
    if version in ("2015-01-01", "2018-01-01"):
        return JSONResponse(
            {
                "galleryEndpoint": this["gallery"],
                "graphEndpoint": this["graph"],
                "portalEndpoint": this["portal"],
                "authentication": {
                    "loginEndpoint": this["authentication"]["loginEndpoint"],
                    "audiences": this["authentication"]["audiences"],
                },
            }
        )
    if version in ("2019-05-01", "2020-06-01"):
        return JSONResponse([this])
    return JSONResponse(this)
