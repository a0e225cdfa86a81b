"""Microsoft.Authorization's ``permissions``: what the caller may do on a resource.

``GET {resource id}/providers/Microsoft.Authorization/permissions`` lists, for each role
assignment of the caller that covers the resource, the role's ``actions`` and
``notActions`` (Azure's Permissions_ListForResource / ListForResourceGroup). The portal
asks it to show only the buttons the caller's roles allow; the gateway still checks every
request itself, so the answer grants nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from gateway.access import rbac
from gateway.api.auth import authenticate, bearer, group_scope, instance_scope, vm_scope
from gateway.api.auth import subscription_scope as sub_scope
from gateway.api.compute import GROUP, INSTANCE, SUB, VM
from gateway.api.context import context_of

router = APIRouter(tags=["permissions"])

PERMISSIONS = "/providers/Microsoft.Authorization/permissions"


def _permissions(request: Request, token: str | None, scope: str) -> dict[str, Any]:
    user = authenticate(context_of(request), token)
    value = []
    for assignment in user.roles:
        if not assignment.covers(scope):
            continue
        role = rbac.role_named(assignment.role)
        value.append(
            {
                "actions": list(role.actions),
                "notActions": list(role.not_actions),
                "dataActions": [],
                "notDataActions": [],
            }
        )
    return {"value": value}


@router.get(SUB + PERMISSIONS, summary="The caller's permissions on the subscription")
async def subscription_permissions(
    request: Request, token: Annotated[str | None, Depends(bearer)]
) -> dict[str, Any]:
    ctx = context_of(request)
    authenticate(ctx, token)
    return _permissions(request, token, sub_scope(ctx, request.path_params))


@router.get(GROUP + PERMISSIONS, summary="The caller's permissions on a resource group")
async def group_permissions(
    request: Request, token: Annotated[str | None, Depends(bearer)]
) -> dict[str, Any]:
    ctx = context_of(request)
    authenticate(ctx, token)
    ctx.inventory.group(request.path_params["resource_group"])
    return _permissions(request, token, group_scope(ctx, request.path_params))


@router.get(VM + PERMISSIONS, summary="The caller's permissions on a VM")
async def vm_permissions(
    request: Request, vm_name: str, token: Annotated[str | None, Depends(bearer)]
) -> dict[str, Any]:
    ctx = context_of(request)
    authenticate(ctx, token)
    scope = vm_scope(ctx, request.path_params)
    ctx.inventory.vm(request.path_params["resource_group"], vm_name)
    return _permissions(request, token, scope)


@router.get(INSTANCE + PERMISSIONS, summary="The caller's permissions on a scale-set instance")
async def instance_permissions(
    request: Request, token: Annotated[str | None, Depends(bearer)]
) -> dict[str, Any]:
    ctx = context_of(request)
    authenticate(ctx, token)
    p = request.path_params
    scope = instance_scope(ctx, p)
    ctx.inventory.instance(p["resource_group"], p["scale_set"], p["instance_id"])
    return _permissions(request, token, scope)
