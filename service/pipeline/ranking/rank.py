"""Rank backbones on a dataset: load, extract (cached), score with every estimator, order.

The result is a plain JSON-able dict (schema below); the engine (:func:`service.pipeline.engine.rank`)
adds ``kind``, the effective ``request`` and the ``environment`` and validates it into
:class:`service.contract.RankingResult` (schema_version 2), which ``backbone-rank rank --json`` prints and
the service's ranking jobs return.

Result schema (``schema_version`` 1, the document built here)::

    {
      "schema_version": 1,
      "dataset": {ref, n_images, n_classes, classes, class_counts, skipped, splits, fingerprint},
      "class_map": {class name: index},
      "estimators": [{"name", "higher_is_better", "reference", "needs"}],
      "backbones": [                       # best first (fused order)
        {"id", "rank", "mean_rank",
         "scores": {estimator: float | null},   # null: not applicable (LEEP/NCE without a source head)
         "unscored": {estimator: reason},       # why each null score is null
         "ranks": {estimator: float | null},    # 1 = best; scores within a relative 1e-9 share their average rank
         "fused_score": float | null,           # calibrated fusion (higher = better); null without one
         "p_best": float | null,                # probability of being best (half-sample resampling)
         "predicted_accuracy": {                # null without a calibration or its inputs
           "finetune": {"value", "low", "high", "inputs"} | null,
           "linear_probe": {"value", "low", "high", "inputs"} | null} | null,
         "source_accuracy": float | null,       # the prior: accuracy on its own source task, when known
         "params_m": float,                     # parameters of the loaded model, millions
         "gmacs", "imagenet_top1": float | null,  # timm's published numbers (service/model_catalogue.py)
         "revision": str | null,                # the hub commit of weights from the HF cache or a download
         "feature_dim", "num_source_classes", "weights_source", "weights_sha256", "data_config",
         "n_images", "n_failed_images", "from_cache",
         "seconds": {"load", "extract", "score", "per_estimator": {estimator: seconds}, "layers": float | null},
         "layers": {                            # layer_scores requested; else null (service/pipeline/ranking/layers.py)
           "layers": [{"index": int | null, "module", "dim", "scores": {estimator: float | null}}],  # pre-logits last
           "decided_by", "best_layer", "n_stages", "freeze_stages": int | null, "advice": str | null,
           "note"?: str} | null,
         "transfer": {"strategy": "as_classifier" | "linear" | "partial" | "full" | "scratch",
           "freeze_stages": int | null,
           "options": [{"strategy", "predicted": {"value", "low", "high", "inputs"} | null,
                        "cost": {"passes", "gmacs"}, "note"}],
           "advice": str} | null}                # how to transfer (service/pipeline/ranking/transfer.py)
      ],
      "fusion": {"method": "calibrated" | "mean_rank", "members", "weights", "normalisation",
                 "calibration": {"path", "created", "source", "loto": {"finetune_mae", "finetune_coverage",
                   "linear_probe_mae", "linear_probe_coverage", "nominal_coverage", "fused_mean_weighted_tau",
                   "best_single", "best_single_mean_weighted_tau",
                   "images_per_class": [calibrated sample sizes]}} | null,     # leave-one-target-out numbers
                 "p_best": {"n_bootstrap", "seed", "resampling", "seconds"} | null, "note": str},
      "failed_images": int,                # images that could not be decoded (skipped)
      "unavailable": [{"id", "code", "detail"}],   # left out (skip_unavailable): weights not to be had
      "seconds": {"total": float}
    }

Fused order (:mod:`service.pipeline.calibration`): with a calibration (the packaged default, or
``BACKBONE_RANK_CALIBRATION_PATH``) backbones are ordered by the calibrated fusion of a few cheap
estimators (and the source-task prior), standardised across the candidates; ``p_best`` comes from
recomputing those members on ``n_bootstrap`` class-stratified half-samples of the images (the same for
every backbone; needs in-memory features), and ``predicted_accuracy`` from the calibrated class-mean
softmax accuracy with a LOTO residual interval (nominal 90 %). Without a calibration, or when none of
its members was computed, the order is the mean of a backbone's per-estimator ranks (over the
estimators that apply to it), ties broken by the first estimator's order, as before.
That order, ``predicted_accuracy`` and ``p_best`` are applied by :mod:`service.pipeline.ranking.fusion`.

Streaming (``rank_backbones(..., streaming=True)``): features are accumulated into
:class:`estimators.StreamingStatistics` batch by batch, in memory independent of the number of
images; the estimators that need the individual samples (kNN, linear probe, LDA/SFDA, ...) get
a null score and their reason in ``unscored``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from estimators import SamplesRequiredError, Statistics, get_estimator, list_estimators, score
from service.errors import (
    EstimatorNeedsSourceHead,
    HubError,
    TooFewSamplesPerClass,
    UnknownBackbone,
    UnknownEstimator,
    UnsafeCheckpointFormat,
    WeightsUnavailable,
)
from service.model_catalogue import catalogue_info
from service.pipeline.calibration.model import Calibration, resolve_calibration
from service.pipeline.calibration.p_best import source_accuracy_of
from service.pipeline.data.datasets import Dataset, load_dataset
from service.pipeline.data.hub_dataset import HubDatasets
from service.pipeline.data.refs import DatasetRef
from service.pipeline.features.cache import FeatureCache
from service.pipeline.features.extract import (
    FeatureSet,
    GroupExtractor,
    ProgressCallback,
    ProgressEvent,
    extract_features,
)
from service.pipeline.models.backbones import LoadedBackbone, load_backbone
from service.pipeline.models.hub import HubAccess
from service.pipeline.models.spec import BackboneSpec, coerce_spec
from service.pipeline.ranking.fusion import _fuse
from service.pipeline.ranking.layers import layer_report
from service.pipeline.ranking.threads import scoring_threads
from service.pipeline.ranking.transfer import scratch_advice, transfer_advice

__all__ = [
    "SCHEMA_VERSION",
    "TIE_RTOL",
    "check_estimators",
    "default_estimators",
    "estimator_ranks",
    "rank_backbones",
    "rank_feature_sets",
    "tied_ranks",
]

_logger = logging.getLogger(__name__)
SCHEMA_VERSION = 1
#: Too slow (or memory-hungry) to be defaults on large datasets; still available by name. kNN and PARC are
#: quadratic in N (PARC holds N x N matrices, ~1 GB at 5,000 samples).
_DEFAULT_SAMPLE_LIMITS = {"knn": 20_000, "parc": 5_000}
#: Iterative fits, available by name but not defaults: NLEEP's 5C-component Gaussian mixture (11-120 s per
#: backbone at N = 2,000, C = 20, D = 512; 13-50 s at N = 272 on a busy 2-core CPU), PACTran-Gauss's L-BFGS
#: (6-14 s at N = 2,000) and the logistic linear probe (100 L-BFGS iterations: 79 of the 140 s that ranking
#: the built-in benchmark took), whose ranking ``ridge_probe`` matches at ~5 % of its cost.
#: Every default estimator costs about a second or less per backbone.
_OPT_IN = frozenset({"nleep", "pactran_gauss", "linear_probe"})


def default_estimators(n_samples: int | None = None, n_classes: int | None = None) -> list[str]:
    """Every registered estimator except the iterative fits (NLEEP, PACTran-Gauss, the logistic linear probe: ask
    for them by name), and the quadratic ones on large datasets (kNN above 20,000 samples, PARC above 5,000).

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
    layer_scores: bool = False,
    progress: ProgressCallback | None = None,
    builtin_dir: Path | None = None,
    streaming: bool = False,
    calibration: Calibration | str | Path | None = "default",
    n_bootstrap: int = 0,
    hub_datasets: HubDatasets | None = None,
    hub: HubAccess | None = None,
    skip_unavailable: bool = False,
    uploads_dir: Path | None = None,
    extractor: GroupExtractor | None = None,
) -> dict[str, Any]:
    """Rank ``backbones`` on ``dataset``; see the module docstring for the result schema.

    Everything the user can get wrong is checked before the first forward pass: estimator
    names, the calibration file, the dataset (paths, images, class sizes) and every backbone's weights.

    ``calibration``: ``"default"`` (the packaged file; mean-rank order when it is absent), a path to a
    calibration JSON (must be valid), a :class:`~service.pipeline.calibration.model.Calibration`, or None
    (mean-rank order, no predicted accuracy). ``n_bootstrap``: half-sample replicates for ``p_best``
    (0, the default: none; each replicate refits the fusion's members for every backbone, which for the
    packaged fusion (ridge probe, PARC, NCTI) costs ~0.1-0.5 s per backbone), seeded by ``seed``.
    ``layer_scores``: also score every stage of each backbone from the same forward pass and give each row its
    layer advice (:mod:`service.pipeline.ranking.layers`).
    ``extractor``: where the forward passes run (:func:`~service.pipeline.features.extract.extract_features`; default
    this process, or the executor ``ray``'s :class:`~service.pipeline.scaleout.extraction.RayExtractor`).
    """
    started = time.perf_counter()
    requested = check_estimators(estimators) if estimators else None
    resolved = resolve_calibration(calibration)
    if not backbones:
        raise ValueError("no backbone given: pass at least one backbone id")
    if not isinstance(dataset, Dataset):
        dataset = load_dataset(
            dataset,
            roots=roots,
            max_per_class=max_per_class,
            seed=seed,
            min_per_class=min_per_class,
            builtin_dir=builtin_dir,
            hub_datasets=hub_datasets,
            uploads_dir=uploads_dir,
        )
    loaded: list[LoadedBackbone] = []
    load_seconds: list[float] = []
    unavailable: list[dict[str, str]] = []
    # Malformed or unknown ids are the caller's mistake and always an error; only weights that cannot be had
    # (missing, pickles only, not on the hub, a refused or failed download) may leave a candidate out.
    for spec in [coerce_spec(backbone) for backbone in backbones]:
        began = time.perf_counter()
        name = spec.id
        try:
            backbone = load_backbone(
                spec,
                weights_dirs=weights_dirs,
                hf_cache_dir=hf_cache_dir,
                allowlist=allowlist,
                hub=hub,
                progress=_download_progress(name, progress),
            )
        except _UNAVAILABLE as err:
            if not skip_unavailable:
                raise
            _logger.info("left out %s: [%s] %s", name, err.code, err.detail)
            unavailable.append({"id": name, "code": err.code, "detail": err.detail})
            continue
        loaded.append(backbone)
        load_seconds.append(time.perf_counter() - began)
    if not loaded:
        raise WeightsUnavailable(
            "no candidate's weights could be had: " + "; ".join(f"{u['id']}: {u['detail']}" for u in unavailable),
            unavailable=unavailable,
        )
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
        stages=layer_scores,
        extractor=extractor,
    )
    result = rank_feature_sets(
        dataset,
        feature_sets,
        estimators=requested,
        min_per_class=min_per_class,
        load_seconds=load_seconds,
        calibration=resolved,
        n_bootstrap=n_bootstrap,
        seed=seed,
        source_accuracy={b.spec.id: source_accuracy_of(b.spec.id) for b in loaded},
        progress=progress,
    )
    result["unavailable"] = unavailable
    result["seconds"] = {"total": time.perf_counter() - started}
    return result


#: Why a candidate can be left out with ``skip_unavailable``: its weights cannot be had here and now (an
#: UnknownBackbone after parsing is a repo the hub does not have).
_UNAVAILABLE = (WeightsUnavailable, UnsafeCheckpointFormat, UnknownBackbone, HubError)


def _download_progress(backbone: str, progress: ProgressCallback | None) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(ProgressEvent("download", backbone, done, total))


def rank_feature_sets(
    dataset: Dataset,
    feature_sets: Sequence[FeatureSet],
    *,
    estimators: Sequence[str] | None = None,
    min_per_class: int = 2,
    load_seconds: Sequence[float] | None = None,
    calibration: Calibration | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
    source_accuracy: Mapping[str, float | None] | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Score already extracted features and build the ranked result (``backbones`` best first).

    Without ``calibration`` (the default here, so the benchmark's scoring pays for no resampling) the
    order is the mean rank; with one, the calibrated fused order, ``predicted_accuracy`` and ``p_best``
    (``n_bootstrap`` half-samples seeded by ``seed``). ``source_accuracy`` maps backbone ids to the prior.
    ``progress`` gets a "score" event per backbone and a "p_best" event per replicate (where a service job
    also learns whether it was cancelled).
    """
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
        with scoring_threads(stats.n_samples, stats.n_features):
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
        scored = time.perf_counter()
        layers = layer_report(feature_set)
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
                "revision": described.get("revision"),
                **_published_facts(described["id"], described.get("params_m")),
                "data_config": described.get("data_config"),
                "n_images": int(feature_set.labels.shape[0]),
                "n_failed_images": len(feature_set.failed),
                "from_cache": feature_set.from_cache,
                "seconds": {
                    "load": load_seconds[position] if load_seconds else 0.0,
                    "extract": feature_set.seconds,
                    "score": scored - began,
                    "per_estimator": estimator_seconds,
                    "layers": None if layers is None else time.perf_counter() - scored,
                },
                "layers": layers,
            }
        )
        if progress is not None:
            progress(ProgressEvent("score", described["id"], position + 1, len(feature_sets)))
    _assign_ranks(rows, infos)
    fusion = _fuse(
        rows, feature_sets, infos, calibration, len(dataset.classes), n_bootstrap, seed, source_accuracy or {},
        progress,
    )  # fmt: skip
    archs = []
    for row in rows:
        feature_set = feature_sets[row.pop("_position")]
        row["transfer"] = transfer_advice(row, feature_set.source_probs, feature_set.labels)
        archs.append(feature_set.backbone.get("arch"))
    scratch_advice(rows, archs)
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
        "fusion": fusion,
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


#: Scores this close (relative) are one value: streamed and in-memory statistics, or two runs on other BLAS
#: builds, differ in the last digits, and a rank must not flip on that.
TIE_RTOL = 1e-9


def tied_ranks(values: Sequence[float], *, higher_is_better: bool, rtol: float = TIE_RTOL) -> list[float]:
    """Ranks of ``values`` (1 = best); values equal within a relative ``rtol`` (or both NaN) share the average
    of their ranks; NaN ranks last.

    Deterministic: values are sorted best first (position breaks exact ties) and a group takes every
    following value within ``rtol`` of the group's first, so a chain of near values never merges two that
    differ by more than ``rtol``.
    """
    n = len(values)
    array = np.asarray(values, dtype=float)
    nan = np.isnan(array)
    key = np.where(nan, np.inf, -array if higher_is_better else array)
    order = sorted(range(n), key=lambda i: (bool(nan[i]), key[i], i))
    ranks = [0.0] * n
    start = 0
    while start < n:
        first = array[order[start]]
        end = start + 1
        while end < n and _same(first, array[order[end]], rtol):
            end += 1
        shared = (start + 1 + end) / 2.0  # the average of positions start+1 .. end
        for position in range(start, end):
            ranks[order[position]] = shared
        start = end
    return ranks


def _same(a: float, b: float, rtol: float) -> bool:
    if np.isnan(a) or np.isnan(b):
        return bool(np.isnan(a) and np.isnan(b))
    if a == b:  # also +-inf
        return True
    if np.isinf(a) or np.isinf(b):
        return False
    return bool(abs(a - b) <= rtol * max(abs(a), abs(b)))


def _published_facts(backbone_id: str, params_m: float | None) -> dict[str, float | None]:
    """The row's size (counted on the loaded model) and, for a published timm model, its GMACs and ImageNet top-1
    from the model catalogue (service/model_catalogue.py): what a user trades accuracy against."""
    entry = catalogue_info(backbone_id)
    return {
        "params_m": params_m,
        "gmacs": entry.gmacs if entry is not None else None,
        "imagenet_top1": entry.imagenet_top1 if entry is not None else None,
    }


def estimator_ranks(
    score_rows: Sequence[Mapping[str, float | None]], higher_is_better: Mapping[str, bool]
) -> tuple[list[dict[str, float | None]], list[float]]:
    """Each row's rank by every estimator of ``higher_is_better`` (1 = best, :func:`tied_ranks`; None where the
    row has no score) and its mean rank over the estimators that scored it (inf: none did).

    The order of a ranking without a usable calibration; a benchmark recomputes it from the recorded scores.
    """
    ranks: list[dict[str, float | None]] = [{} for _ in score_rows]
    for name, higher in higher_is_better.items():
        present = [(i, float(value)) for i, row in enumerate(score_rows) if (value := row.get(name)) is not None]
        tied = tied_ranks([value for _, value in present], higher_is_better=higher)
        for row_ranks in ranks:
            row_ranks[name] = None
        for (i, _), rank in zip(present, tied, strict=True):
            ranks[i][name] = float(rank)
    means = []
    for row_ranks in ranks:
        present_ranks = [r for r in row_ranks.values() if r is not None]
        means.append(float(np.mean(present_ranks)) if present_ranks else float("inf"))
    return ranks, means


def _assign_ranks(rows: list[dict[str, Any]], infos: Sequence[Any]) -> None:
    """Per-estimator ranks (1 = best, ties averaged) and the fused mean rank; sorts ``rows``."""
    ranks, means = estimator_ranks([row["scores"] for row in rows], {i.name: i.higher_is_better for i in infos})
    for row, row_ranks, mean in zip(rows, ranks, means, strict=True):
        row["ranks"] = row_ranks
        row["mean_rank"] = mean
    first = infos[0].name if infos else None
    rows.sort(key=lambda r: (r["mean_rank"], r["ranks"].get(first) or float("inf"), r["_position"]))
    for position, row in enumerate(rows, start=1):
        row["rank"] = position
