"""The ranking report page: dataset summary, ranked table, score bars per estimator, and the calibrated prediction.

Read from a ranking result (``backbone-rank rank --json``, the service's ranking jobs) through its typed model
(:class:`service.contract.RankingResult`), so the page's whole view model sits in one file; the machinery every page
shares is :mod:`service.reports._page`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.contract import RankingResult
from service.contract.results import BackboneRow, Prediction

from . import figures
from ._format import (
    NA,
    as_float,
    dataset_ref_label,
    fmt_ci,
    fmt_fixed,
    fmt_int,
    fmt_number,
    fmt_percent,
    fmt_rank,
    fmt_seconds,
    short_names,
)
from ._page import _direction, _render, _typed_as

__all__ = ["render_ranking_report"]

_MAX_CLASSES_LISTED = 60


def render_ranking_report(result: RankingResult | Mapping[str, Any]) -> str:
    """The ranking page: dataset summary, ranked table, one score bar chart per estimator.

    Parameters
    ----------
    result : RankingResult or dict
        A ranking result: its typed model, or its JSON document (any schema version), which is validated into the
        model first (:func:`service.reports._page.typed_result`); anything else, or a document that does not
        validate, is an :class:`~service.errors.InvalidResult`.

    Returns
    -------
    str
        One self-contained HTML document.
    """
    ranking = _typed_as(result, RankingResult, "ranking")
    dataset = ranking.dataset
    estimators = ranking.estimators
    backbones = sorted(ranking.backbones, key=lambda b: b.rank)
    ids = [b.id for b in backbones]
    labels = short_names(ids)
    rows = []
    for backbone in backbones:
        # plain floats in the model: NaN (a JSON null once serialised) counts as missing
        parts = [as_float(backbone.seconds.load), as_float(backbone.seconds.extract), as_float(backbone.seconds.score)]
        total = sum(p for p in parts if p is not None) if any(p is not None for p in parts) else None
        scores, ranks = backbone.scores, backbone.ranks
        rows.append(
            {
                "rank": fmt_rank(backbone.rank),
                "id": backbone.id,
                "mean_rank": fmt_fixed(backbone.mean_rank, 2),
                "cells": [
                    {
                        "score": fmt_number(scores.get(e.name)),
                        "rank": fmt_rank(ranks.get(e.name)),
                        "top": ranks.get(e.name) == 1.0,
                    }
                    for e in estimators
                ],
                "feature_dim": fmt_int(backbone.feature_dim),
                "weights_source": backbone.weights_source or NA,
                "seconds": fmt_seconds(total),
                "seconds_detail": " · ".join(
                    f"{k} {fmt_seconds(v)}" for k, v in zip(("load", "extract", "score"), parts, strict=True)
                ),
                "cached": backbone.from_cache,
                "top_count": sum(ranks.get(e.name) == 1.0 for e in estimators),
            }
        )
    panels = [
        figures.BarPanel(
            title=f"{e.name} {_direction(e.higher_is_better)}",
            values=[b.scores.get(e.name) for b in backbones],
            labels=[labels[i] for i in ids],
            best=[i for i, b in enumerate(backbones) if b.ranks.get(e.name) == 1.0],
        )
        for e in estimators
    ]
    bars = figures.score_bars_figure(panels, title="score per backbone, by estimator") if panels and rows else None
    classes = dataset.classes or [name for name, _ in sorted(ranking.class_map.items(), key=lambda kv: kv[1])]
    counts = list(dataset.class_counts.values())
    reference = dataset_ref_label(dataset.ref)
    facts = [
        ("dataset", reference),
        ("images", fmt_int(dataset.n_images)),
        ("classes", fmt_int(dataset.n_classes)),
        ("images per class", f"{min(counts):g} – {max(counts):g}" if counts else NA),
        (
            "skipped while listing",
            ", ".join(f"{reason}: {n}" for reason, n in dataset.skipped.items()) if dataset.skipped else "none",
        ),
        ("undecodable, skipped", fmt_int(ranking.failed_images) if ranking.failed_images else "none"),
        ("splits", ", ".join(dataset.splits) or "none"),
        ("fingerprint", dataset.fingerprint or NA),
        ("total time", fmt_seconds(ranking.seconds.total)),
    ]
    return _render(
        "ranking.html.j2",
        title=f"Ranking: {reference}",
        dataset_label=reference,
        facts=facts,
        classes=classes[:_MAX_CLASSES_LISTED],
        more_classes=max(0, len(classes) - _MAX_CLASSES_LISTED),
        estimators=[
            {
                "name": e.name,
                "direction": _direction(e.higher_is_better),
                "reference": e.reference,
                "needs": ", ".join(e.needs),
            }
            for e in estimators
        ],
        rows=rows,
        winner=rows[0]["id"] if rows else None,
        bars=bars,
        prediction=_prediction_table(ranking, backbones),
        layers=_layer_table(backbones),
        transfer=[
            {"id": b.id, "strategy": b.transfer.strategy.replace("_", " "), "advice": b.transfer.advice}
            for b in backbones
            if b.transfer is not None
        ],
    )


def _layer_table(backbones: Sequence[BackboneRow]) -> list[dict[str, Any]]:
    """Each backbone's layer advice (a ranking with ``layer_scores``), with the per-layer accuracy it reads."""
    table = []
    for backbone in backbones:
        advice = backbone.layers
        if advice is None:
            continue
        table.append(
            {
                "id": backbone.id,
                "best_layer": advice.best_layer,
                "advice": advice.advice or advice.note or NA,
                "layers": [
                    {"module": layer.module, "accuracy": fmt_percent(layer.scores.get(advice.decided_by))}
                    for layer in advice.layers
                ],
            }
        )
    return table


def _predicted(prediction: Prediction | None) -> dict[str, str]:
    if prediction is None:
        return {"value": NA, "ci": ""}
    return {"value": fmt_percent(prediction.value), "ci": fmt_ci(prediction.low, prediction.high, 100, 1)}


def _prediction_table(ranking: RankingResult, backbones: Sequence[BackboneRow]) -> dict[str, Any] | None:
    """Fused score, p(best) and predicted accuracies of a calibrated ranking; None for a mean-rank one."""
    fusion = ranking.fusion
    if fusion.method != "calibrated":
        return None
    calibration = fusion.calibration
    loto = calibration.loto if calibration is not None else None
    return {
        "loto_mae": fmt_percent(loto.finetune_mae if loto is not None else None),
        "loto_coverage": fmt_percent(loto.finetune_coverage if loto is not None else None, 0),
        "members": ", ".join(fusion.members),
        "normalisation": fusion.normalisation or NA,
        "calibration": (calibration.path if calibration is not None else None) or "in-memory calibration",
        "created": (calibration.created if calibration is not None else None) or NA,
        "n_bootstrap": fmt_int(fusion.p_best.n_bootstrap) if fusion.p_best is not None else None,
        "note": fusion.note,
        "rows": [
            {
                "rank": fmt_rank(backbone.rank),
                "id": backbone.id,
                "fused": fmt_fixed(backbone.fused_score, 2),
                "p_best": fmt_fixed(backbone.p_best, 2),
                "finetune": _predicted(backbone.predicted_accuracy.finetune if backbone.predicted_accuracy else None),
                "linear_probe": _predicted(
                    backbone.predicted_accuracy.linear_probe if backbone.predicted_accuracy else None
                ),
            }
            for backbone in backbones
        ],
    }
