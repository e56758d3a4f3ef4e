"""The product's own orders on a benchmark result, from its recorded scores: ``default`` and ``predicted_accuracy``.

A benchmark scores the estimators one by one, but a user of ``rank`` gets one order: the calibrated fusion of a
few of them (or, without a usable calibration, the mean of the per-estimator ranks), and a predicted accuracy per
backbone. :func:`add_default_order` applies a calibration to every target's recorded scores with the functions a
ranking applies (:func:`service.pipeline.ranking.fusion.default_order`,
:func:`service.pipeline.ranking.fusion.predicted_accuracy`, :func:`service.pipeline.ranking.rank.estimator_ranks`),
so the benchmark's ``default`` column is the order ``rank`` gives on the same scores and the two cannot drift.
It needs no features, so results recorded before these columns existed are scored afterwards
(``backbone-rank resummarize``). Apart from the run (:mod:`service.pipeline.benchmark.benchmark`) and the summary
(:mod:`service.pipeline.benchmark.results`) because it is the one part of a benchmark that applies a calibration.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from service.pipeline.benchmark.results import summarize
from service.pipeline.calibration.model import Calibration, resolve_calibration
from service.pipeline.ranking.fusion import default_order, describe_calibration, predicted_accuracy
from service.pipeline.ranking.rank import estimator_ranks

__all__ = ["PRODUCT_COLUMNS", "add_default_order", "resummarize"]

#: The product's methods, as a result's ``default_order.methods`` lists them (both higher-is-better); the names are
#: service.contract.results.PRODUCT_METHODS, where a row's values are read.
PRODUCT_COLUMNS: tuple[dict[str, Any], ...] = (
    {
        "name": "default",
        "higher_is_better": True,
        "description": "the order `rank` returns with default settings: the calibration's fused score (minus the "
        "mean per-estimator rank where no calibration applies)",
    },
    {
        "name": "predicted_accuracy",
        "higher_is_better": True,
        "description": "the fine-tuned accuracy the calibration predicts from the scores, as `rank` reports it",
    },
)


def add_default_order(
    result: dict[str, Any], calibration: Calibration | str | os.PathLike[str] | None = "default"
) -> dict[str, Any]:
    """Record the product's orders on every target of a benchmark result (in place; returns ``result``).

    Per backbone row: ``default`` (the default order's score, higher = better; null where it has none) and
    ``predicted_accuracy`` (as a ranking's row holds it; null without a calibration or its inputs). Per target:
    ``default_order``, how that order was made there. On the result: ``default_order``, the calibration applied
    (path, created, source, its fusion) and the methods. Recomputes whatever an earlier call recorded.

    Parameters
    ----------
    result : a benchmark result (any schema version; only ``estimators`` and each target's rows are read)
    calibration : ``"default"`` (the packaged file), a path, a :class:`Calibration`, or None (mean-rank order)
        — what :func:`service.pipeline.calibration.model.resolve_calibration` takes.
    """
    resolved = resolve_calibration(calibration)
    directions = {str(e["name"]): bool(e["higher_is_better"]) for e in result["estimators"]}
    for target in result["targets"]:
        rows = target["backbones"]
        _, mean_ranks = estimator_ranks([row["scores"] for row in rows], directions)
        order = default_order([row["scores"] for row in rows], mean_ranks, resolved, list(directions))
        for row, value in zip(rows, order.scores, strict=True):
            row["default"] = float(value) if np.isfinite(value) else None
            estimator_scores = {name: row["scores"].get(name) for name in directions}
            row["predicted_accuracy"] = (
                None
                if resolved is None
                else predicted_accuracy(resolved, int(target["n_classes"]), estimator_scores, target["n_rank_images"])
            )
        fusion = order.fusion
        target["default_order"] = {
            "method": "mean_rank" if fusion is None else "calibrated",
            "members": list(directions) if fusion is None else list(fusion.members),
            "weights": None if fusion is None else list(fusion.weights),
            "normalisation": "rank" if fusion is None else fusion.normalisation,
            "note": order.note,
        }
    result["default_order"] = {
        "calibration": None if resolved is None else describe_calibration(resolved),
        "fusion": None if resolved is None else resolved.fusion.to_dict(),
        "methods": [dict(column) for column in PRODUCT_COLUMNS],
    }
    return result


def resummarize(
    result: dict[str, Any],
    calibration: Calibration | str | os.PathLike[str] | None = "default",
    *,
    n_bootstrap: int | None = None,
) -> dict[str, Any]:
    """A recorded benchmark result with the product's orders under ``calibration`` and its summary recomputed
    (in place; returns ``result``): what ``backbone-rank resummarize`` writes, without rerunning anything.

    ``n_bootstrap``: replicates for the intervals; None takes the recorded request's (500 for results without
    one, the benchmark's default), so the estimators' numbers come out as recorded. A recorded ``p_best`` is kept.
    """
    if n_bootstrap is None:
        n_bootstrap = int((result.get("request") or {}).get("n_bootstrap", 500))
    add_default_order(result, calibration)
    return summarize(result, n_bootstrap=n_bootstrap)
