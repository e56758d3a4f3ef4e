"""The calibrated fusion applied to a scored ranking: fused order, predicted accuracy and p(best).

:func:`service.pipeline.ranking.rank.rank_feature_sets` scores the features and ranks each estimator; this module
then applies a calibration (:mod:`service.pipeline.calibration.model`; ``p_best`` by
:mod:`service.pipeline.calibration.p_best`) to those rows, or says why the order stays the mean rank; its note
also says whether the zoo models ranked are the builds the calibration was fitted with (weights sha256). Separate
from the scoring because it is the one part of a ranking that depends on a calibration, and it only applies one
(the ``ranking-applies-calibration`` import contract in pyproject.toml: no fitting or evaluation here).
:func:`default_order` and :func:`predicted_accuracy` are also what a benchmark scores as the product's own
orders (:mod:`service.pipeline.benchmark.default_order`), so that the benchmark measures the order ``rank`` gives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from estimators import Statistics, score
from service.pipeline.calibration.model import PRIOR_FIELDS, Calibration, Fusion, fused_scores
from service.pipeline.calibration.p_best import p_best
from service.pipeline.features.extract import FeatureSet, ProgressCallback, ProgressEvent
from service.pipeline.ranking.threads import scoring_threads


@dataclass(frozen=True)
class DefaultOrder:
    """The order a ranking with default settings gives one target's candidates, as scores (higher = better).

    ``scores`` (one per candidate, in the order given) is the calibrated fused score, or, where the order is the
    mean rank (no calibration, or none of its estimators computed), minus the mean rank; NaN for a candidate
    the order has no value for (none of the fusion's members). ``fusion`` is the calibration's fusion restricted
    to the members computed here (None: mean-rank order, ``note`` says why).
    """

    scores: NDArray[np.float64]
    fusion: Fusion | None
    note: str


def default_order(
    member_rows: Sequence[Mapping[str, float | None]],
    mean_ranks: Sequence[float],
    calibration: Calibration | None,
    computed: Collection[str],
) -> DefaultOrder:
    """The default order of one target's candidates: what ``rank`` sorts by and a benchmark's ``default`` column.

    Parameters
    ----------
    member_rows : one mapping per candidate, ``{estimator or prior name: value or None}`` (priors under the
        fusion's member names, :data:`PRIOR_FIELDS`' keys)
    mean_ranks : each candidate's mean per-estimator rank (1 = best; the order without a usable calibration)
    calibration : the calibration to apply, or None
    computed : the estimator names computed for this target (the priors count as computed)
    """
    by_mean_rank = -np.asarray(mean_ranks, dtype=float)
    by_mean_rank[~np.isfinite(by_mean_rank)] = np.nan
    if calibration is None:
        return DefaultOrder(by_mean_rank, None, "no calibration: ordered by the mean of the per-estimator ranks")
    spec = calibration.fusion
    available = set(computed) | set(PRIOR_FIELDS)
    values = [{m: _finite(row.get(m)) for m in spec.members} for row in member_rows]
    used = [m for m in spec.members if m in available and any(row[m] is not None for row in values)]
    if not [m for m in used if m not in PRIOR_FIELDS]:  # priors alone say nothing about this dataset
        note = f"none of the fusion's estimators {list(spec.members)} was computed: ordered by mean rank"
        return DefaultOrder(by_mean_rank, None, note)
    members = Fusion(
        tuple(used), tuple(w for m, w in zip(spec.members, spec.weights, strict=True) if m in used),
        spec.normalisation, spec.higher_is_better,
    )  # fmt: skip
    note = "ordered by the calibrated fusion"
    left_out = [m for m in spec.members if m not in used]
    if left_out:
        note += f"; members not computed here (left out): {', '.join(left_out)}"
    return DefaultOrder(fused_scores([{m: row[m] for m in used} for row in values], members), members, note)


def describe_calibration(calibration: Calibration) -> dict[str, Any]:
    """What a result records of the calibration it applied: where from, when, fitted on what, its LOTO numbers."""
    return {
        "path": calibration.path,
        "created": calibration.created,
        "source": dict(calibration.source),
        "loto": calibration.headline(),
    }


def predicted_accuracy(
    calibration: Calibration, n_classes: int, scores: Mapping[str, float | None], n_images: int
) -> dict[str, Any] | None:
    """A candidate's predicted accuracy from its estimator scores on ``n_images`` ranked images (a ranking's
    ``predicted_accuracy`` and a benchmark's): for fine-tuning on as many images per class as were ranked."""
    return calibration.predict_accuracy(n_classes, scores, images_per_class=int(n_images) / max(n_classes, 1))


def _fuse(
    rows: list[dict[str, Any]],
    feature_sets: Sequence[FeatureSet],
    infos: Sequence[Any],
    calibration: Calibration | None,
    n_classes: int,
    n_bootstrap: int,
    seed: int,
    source_accuracy: Mapping[str, float | None],
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Calibrated fused order, predicted accuracy and p_best (in place on ``rows``); the ``fusion`` block."""
    for row in rows:
        row["source_accuracy"] = source_accuracy.get(row["id"])
        row["fused_score"] = None
        row["p_best"] = None
        row["predicted_accuracy"] = None
    order = default_order(
        [member_values(row) for row in rows], [row["mean_rank"] for row in rows], calibration, [i.name for i in infos]
    )
    fallback = {
        "method": "mean_rank",
        "members": [info.name for info in infos],
        "weights": None,
        "normalisation": "rank",
        "calibration": None,
        "p_best": None,
    }
    if calibration is None:
        return {**fallback, "note": order.note}
    described = describe_calibration(calibration)
    for row in rows:
        row["predicted_accuracy"] = predicted_accuracy(calibration, n_classes, row["scores"], row["n_images"])
    zoo = _zoo_note(calibration, rows)
    members = order.fusion
    if members is None:
        return {**fallback, "calibration": described, "note": order.note + zoo}
    for row, value in zip(rows, order.scores, strict=True):
        row["fused_score"] = float(value) if np.isfinite(value) else None
    rows.sort(key=lambda r: (r["fused_score"] is None, -(r["fused_score"] or 0.0), r["mean_rank"], r["_position"]))
    for position, row in enumerate(rows, start=1):
        row["rank"] = position
    note = order.note + _setting_note(calibration, rows, n_classes) + zoo
    resampling = None
    ordered = [feature_sets[row["_position"]] for row in rows]
    if n_bootstrap > 0:
        why_not = _why_no_resampling(ordered)
        if why_not is None:
            began = time.perf_counter()
            on_replicate = (
                None if progress is None else lambda done: progress(ProgressEvent("p_best", "*", done, n_bootstrap))
            )
            probabilities = p_best(
                _member_scorer(ordered, rows, members.members),
                ordered[0].labels,
                members,
                n_bootstrap=n_bootstrap,
                seed=seed,
                on_replicate=on_replicate,
            )
            for row, value in zip(rows, probabilities, strict=True):
                row["p_best"] = float(value)
            resampling = {
                "n_bootstrap": n_bootstrap,
                "seed": seed,
                "resampling": "class-stratified half-samples",
                "seconds": time.perf_counter() - began,
            }
        else:
            note += f"; no p_best: {why_not}"
    return {
        "method": "calibrated",
        "members": list(members.members),
        "weights": list(members.weights),
        "normalisation": members.normalisation,
        "calibration": described,
        "p_best": resampling,
        "note": note,
    }


def _setting_note(calibration: Calibration, rows: Sequence[Mapping[str, Any]], n_classes: int) -> str:
    """Predicted accuracies are for fine-tuning on as many images per class as were ranked: say how that
    compares with the settings the calibration learned."""
    calibrated = calibration.images_per_class()
    if not calibrated or not rows:
        return ""
    ranked = max(int(row["n_images"]) for row in rows) / max(n_classes, 1)
    note = (
        f"; predicted accuracies are for fine-tuning on as many images per class as were ranked ({ranked:.0f}); "
        f"the calibration learned {' and '.join(f'{v:g}' for v in calibrated)} per class"
    )
    # fewer than half the fewest or more than twice the most: the prediction extrapolates in sample size
    if ranked < 0.5 * calibrated[0] or ranked > 2.0 * calibrated[-1]:
        note += ", so here they extrapolate"
    return note


def _zoo_note(calibration: Calibration, rows: Sequence[Mapping[str, Any]]) -> str:
    """Whether the zoo models ranked are the builds the calibration was fitted with (by weights sha256): its
    predicted accuracies and fusion learned from those builds' scores."""
    fitted = calibration.zoo_weights()
    ranked = [row for row in rows if row["id"] in fitted]
    parts, unknown = [], []
    for row in ranked:
        now, then = row.get("weights_sha256"), fitted[row["id"]]
        if not then:
            unknown.append(row["id"])
        elif now != then:
            parts.append(
                f"{row['id']} in use differs from the zoo the calibration was fitted with (weights sha256 "
                f"{(now or 'none')[:12]}… vs {then[:12]}…): predicted accuracies may be off"
            )
    if unknown:
        parts.append(
            f"whether {', '.join(unknown)} are the builds the calibration was fitted with is unknown (it records no "
            "weights sha256 for them)"
        )
    if ranked and not parts:
        parts.append(
            f"the zoo models ranked here ({len(ranked)}) are the builds the calibration was fitted with "
            "(weights sha256 match)"
        )
    return "".join(f"; {part}" for part in parts)


def member_values(row: Mapping[str, Any]) -> dict[str, float | None]:
    """A ranked row's estimator scores and its priors under the fusion's member names (:data:`PRIOR_FIELDS`)."""
    return {**row["scores"], **{name: row.get(field) for name, field in PRIOR_FIELDS.items()}}


def _member(row: Mapping[str, Any], name: str) -> float | None:
    return _finite(row.get(PRIOR_FIELDS[name]) if name in PRIOR_FIELDS else row["scores"].get(name))


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _why_no_resampling(feature_sets: Sequence[FeatureSet]) -> str | None:
    if any(fs.features is None for fs in feature_sets):
        return "streamed features keep no samples to resample"
    first = feature_sets[0].indices
    if any(fs.indices.shape != first.shape or not np.array_equal(fs.indices, first) for fs in feature_sets):
        return "the backbones decoded different images, so no common resample exists"
    return None


def _member_scorer(
    feature_sets: Sequence[FeatureSet], rows: Sequence[Mapping[str, Any]], members: Sequence[str]
) -> Callable[[NDArray[np.intp]], list[Mapping[str, float | None]]]:
    """``rows -> [{member: score}]`` on an image subset, one dict per backbone (in ``rows`` order)."""

    def scores(subset: NDArray[np.intp]) -> list[Mapping[str, float | None]]:
        out: list[Mapping[str, float | None]] = []
        for fs, row in zip(feature_sets, rows, strict=True):
            assert fs.features is not None
            probs = fs.source_probs[subset] if fs.source_probs is not None else None
            stats = Statistics(fs.features[subset], fs.labels[subset], source_probs=probs)
            values: dict[str, float | None] = {}
            with scoring_threads(stats.n_samples, stats.n_features):
                for name in members:
                    if name in PRIOR_FIELDS:
                        values[name] = _member(row, name)
                        continue
                    if row["scores"].get(name) is None:  # not applicable to this backbone on the full data either
                        values[name] = None
                        continue
                    try:
                        values[name] = score(name, stats=stats)
                    except ValueError:  # e.g. a degenerate subsample for this estimator: the member sits out
                        values[name] = None
            out.append(values)
        return out

    return scores
