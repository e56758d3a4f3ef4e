"""Fitting a calibration from benchmark results (offline): what ``backbone-rank calibrate`` runs.

Reads the results (:mod:`service.pipeline.calibration.samples`), selects the accuracy models and the fusion on
every target (:mod:`service.pipeline.calibration.selection`) and attaches their leave-one-target-out evaluation
(:mod:`service.pipeline.calibration.evaluation`); the result is the :class:`Calibration` that
:func:`service.pipeline.calibration.model.save_calibration` writes and a ranking applies. A module of its own
because it sits on top of the evaluation, which the request-time path never imports.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from service.pipeline.calibration.evaluation import loto_evaluation
from service.pipeline.calibration.model import GROUND_TRUTHS, AccuracyModel, Calibration
from service.pipeline.calibration.samples import samples_from_results, zoo_hashes_of
from service.pipeline.calibration.selection import _fusion_candidates, _select_accuracy_models, _select_fusion

__all__ = ["fit_calibration"]


def fit_calibration(
    results: Sequence[Mapping[str, Any]],
    *,
    files: Sequence[str | os.PathLike[str]] | None = None,
    max_member_seconds: float = math.inf,
    fusable: Collection[str] | None = None,
    kinds: Mapping[str, str] | None = None,
) -> Calibration:
    """Fit on every target of ``results`` (benchmark result dicts) and attach the LOTO evaluation.

    Parameters
    ----------
    results : sequence of benchmark results
    files : the paths they were read from (recorded in ``source``), optional
    max_member_seconds : float
        Fusion members must cost at most this many seconds per (target, backbone) on average (as the
        benchmark recorded), since ``p_best`` recomputes them on every resample (default: no limit). The
        priors are free.
    fusable : collection of str, optional
        Estimators allowed as fusion members (default: every one; :data:`FUSABLE_ESTIMATORS
        <service.pipeline.calibration.selection.FUSABLE_ESTIMATORS>` are the ones without a D x D
        decomposition or PCA, for a quick ``p_best``). Every estimator is still compared as a single one.
    kinds : mapping, optional
        ``{target name: kind}`` for results whose targets do not record their kind (leave-one-kind-out).

    Raises
    ------
    InvalidCalibration
        Not benchmark results, fewer than 3 targets, or no ``class_means`` scores.
    """
    samples, directions = samples_from_results(results, kinds)
    evaluation = loto_evaluation(samples, directions, max_member_seconds=max_member_seconds, fusable=fusable)
    accuracy: dict[str, list[AccuracyModel] | None] = {}
    for gt in GROUND_TRUTHS:
        models = _select_accuracy_models(samples, gt) if any(s.truth(gt) is not None for s in samples) else []
        accuracy[gt] = models or None
    candidates = _fusion_candidates(samples, directions, max_member_seconds, fusable)
    fusion, train_tau, selection = _select_fusion(samples, directions, candidates)
    # what the packaged fusion could choose from, and how it scores on the targets it was chosen on (optimistic)
    evaluation["fusion"]["final_candidates"] = candidates
    evaluation["fusion"]["final_train_mean_weighted_tau"] = train_tau
    evaluation["fusion"]["final_selection"] = selection
    names = list(files) if files is not None else [None] * len(results)
    source = {
        "results": [
            {
                "file": None if name is None else str(name),
                "suite": (r.get("suite") or {}).get("name"),
                "fingerprint": (r.get("environment") or {}).get("fingerprint"),
                "created": r.get("created"),
                "n_targets": len(r["targets"]),
                "n_backbones": len({row["id"] for t in r["targets"] for row in t["backbones"]}),
            }
            for r, name in zip(results, names, strict=True)
        ],
        "zoo": zoo_hashes_of(results),  # the zoo models' hashes, so a ranking with other weights can say so
    }
    created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Calibration(accuracy=accuracy, fusion=fusion, evaluation=evaluation, source=source, created=created)
