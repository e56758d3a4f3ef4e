"""The calibrated fusion applied to a scored ranking: fused order, predicted accuracy and p(best).

:func:`service.pipeline.ranking.rank.rank_feature_sets` scores the features and ranks each estimator; this module
then applies a calibration (:mod:`service.pipeline.calibration.model`; ``p_best`` by
:mod:`service.pipeline.calibration.p_best`) to those rows, or says why the order stays the mean rank; its note
also says whether the zoo models ranked are the builds the calibration was fitted with (weights sha256). Separate
from the scoring because it is the one part of a ranking that depends on a calibration, and it only applies one
(the ``ranking-applies-calibration`` import contract in pyproject.toml: no fitting or evaluation here).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from estimators import Statistics, score
from service.pipeline.calibration.model import PRIOR_FIELDS, Calibration, Fusion, fused_scores
from service.pipeline.calibration.p_best import p_best
from service.pipeline.features.extract import FeatureSet, ProgressCallback, ProgressEvent


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
    fallback = {
        "method": "mean_rank",
        "members": [info.name for info in infos],
        "weights": None,
        "normalisation": "rank",
        "calibration": None,
        "p_best": None,
    }
    if calibration is None:
        return {**fallback, "note": "no calibration: ordered by the mean of the per-estimator ranks"}
    described = {
        "path": calibration.path,
        "created": calibration.created,
        "source": dict(calibration.source),
        "loto": calibration.headline(),
    }
    for row in rows:
        row["predicted_accuracy"] = calibration.predict_accuracy(
            n_classes, row["scores"], images_per_class=int(row["n_images"]) / max(n_classes, 1)
        )
    zoo = _zoo_note(calibration, rows)
    spec = calibration.fusion
    computed = {info.name for info in infos} | set(PRIOR_FIELDS)
    used = [m for m in spec.members if m in computed and any(_member(row, m) is not None for row in rows)]
    if not [m for m in used if m not in PRIOR_FIELDS]:  # priors alone say nothing about this dataset
        return {
            **fallback,
            "calibration": described,
            "note": f"none of the fusion's estimators {list(spec.members)} was computed: ordered by mean rank{zoo}",
        }
    members = Fusion(
        tuple(used), tuple(w for m, w in zip(spec.members, spec.weights, strict=True) if m in used),
        spec.normalisation, spec.higher_is_better,
    )  # fmt: skip
    fused = fused_scores([{m: _member(row, m) for m in used} for row in rows], members)
    for row, value in zip(rows, fused, strict=True):
        row["fused_score"] = float(value) if np.isfinite(value) else None
    rows.sort(key=lambda r: (r["fused_score"] is None, -(r["fused_score"] or 0.0), r["mean_rank"], r["_position"]))
    for position, row in enumerate(rows, start=1):
        row["rank"] = position
    note = "ordered by the calibrated fusion"
    left_out = [m for m in spec.members if m not in used]
    if left_out:
        note += f"; members not computed here (left out): {', '.join(left_out)}"
    note += _setting_note(calibration, rows, n_classes) + zoo
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
                _member_scorer(ordered, rows, used),
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


def _member(row: Mapping[str, Any], name: str) -> float | None:
    value = row.get(PRIOR_FIELDS[name]) if name in PRIOR_FIELDS else row["scores"].get(name)
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
