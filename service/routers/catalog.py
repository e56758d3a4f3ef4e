"""``/v1/backbones``, ``/v1/estimators``, ``/v1/datasets/builtin``: what this service can run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.catalog import backbone_catalog, builtin_dataset_catalog, estimator_catalog
from service.deps import SettingsDep, require_api_key

router = APIRouter(prefix="/v1", tags=["catalog"], dependencies=[Depends(require_api_key)])


@router.get("/backbones", summary="Backbones whose weights are on this machine")
def list_backbones(settings: SettingsDep) -> dict[str, Any]:
    """Packaged ImageNet backbones, the built-in zoo, weights dirs and the HF cache, each with
    ``available_offline``; any timm architecture also works as ``random:<arch>``."""
    return backbone_catalog(settings)


@router.get("/estimators", summary="Transferability estimators")
def list_estimators(settings: SettingsDep) -> dict[str, Any]:
    return {"estimators": estimator_catalog()}


@router.get("/datasets/builtin", summary="Built-in offline datasets (use as {kind: builtin, name})")
def list_builtin_datasets(settings: SettingsDep) -> dict[str, Any]:
    return {"datasets": builtin_dataset_catalog(settings)}
