"""``/v1/backbones``, ``/v1/models``, ``/v1/estimators``, ``/v1/datasets/builtin``: what this service can run."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from service.catalog import backbone_catalog, builtin_dataset_catalog, estimator_catalog, model_listing
from service.deps import SettingsDep, api_key_scheme

router = APIRouter(prefix="/v1", tags=["catalog"], dependencies=[Depends(api_key_scheme)])


@router.get("/backbones", summary="Backbones whose weights are on this machine")
def list_backbones(settings: SettingsDep) -> dict[str, Any]:
    """Packaged ImageNet backbones, the built-in zoo, weights dirs and the HF cache, each with
    ``available_offline``; any timm architecture also works as ``random:<arch>``."""
    return backbone_catalog(settings)


@router.get("/models", summary="timm's pretrained models: size, cost, ImageNet accuracy, weights here or not")
def list_models(
    settings: SettingsDep,
    selection: Annotated[
        str | None,
        Query(alias="set", max_length=300, description="A named set: @popular, @mobile, @top:N[?filters]."),
    ] = None,
    filters: Annotated[
        str | None,
        Query(
            alias="filter",
            max_length=300,
            description="KEY=VALUE&... (URL-encoded): max_params, max_gmacs, min_top1, family, pretrain.",
        ),
    ] = None,
    search: Annotated[str | None, Query(max_length=200, description="Terms the id must contain.")] = None,
    local: Annotated[bool, Query(description="Only models whose weights are on this server.")] = False,
    sort: Annotated[Literal["top1", "params", "gmacs", "speed", "id"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 100,
) -> dict[str, Any]:
    """The packaged catalogue of timm's published results; any id (or the set itself) is a valid ``backbones``
    item of a ranking, within this service's allowlists."""
    return model_listing(
        settings, selection=selection, filters=filters, search=search, local_only=local, sort=sort, limit=limit
    )


@router.get("/estimators", summary="Transferability estimators")
def list_estimators(settings: SettingsDep) -> dict[str, Any]:
    return {"estimators": estimator_catalog()}


@router.get("/datasets/builtin", summary="Built-in offline datasets (use as {kind: builtin, name})")
def list_builtin_datasets(settings: SettingsDep) -> dict[str, Any]:
    return {"datasets": builtin_dataset_catalog(settings)}
