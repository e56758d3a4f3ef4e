"""The ranking report page: dataset summary, ranked table, score bars per estimator, and the calibrated prediction.

Read from a ranking result (``backbone-rank rank --json``, the service's ranking jobs), so the page's whole view
model sits in one file; the machinery every page shares is :mod:`service.reports._page`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
from ._page import _direction, _malformed_is_invalid, _mapping, _render, _sequence

__all__ = ["render_ranking_report"]

_MAX_CLASSES_LISTED = 60


@_malformed_is_invalid("ranking")
def render_ranking_report(result: Mapping[str, Any]) -> str:
    """The ranking page: dataset summary, ranked table, one score bar chart per estimator.

    Parameters
    ----------
    result : dict
        A ranking result (schema in the docstring of :mod:`service.pipeline.ranking.rank`).

    Returns
    -------
    str
        One self-contained HTML document.
    """
    dataset = _mapping(result.get("dataset"))
    estimators = [_mapping(e) for e in _sequence(result.get("estimators")) if _mapping(e).get("name") is not None]
    backbones = [_mapping(b) for b in _sequence(result.get("backbones"))]
    backbones.sort(key=lambda b: as_float(b.get("rank")) or float("inf"))
    ids = [str(b.get("id", NA)) for b in backbones]
    labels = short_names(ids)
    rows = []
    for backbone in backbones:
        seconds = _mapping(backbone.get("seconds"))
        parts = [as_float(seconds.get(k)) for k in ("load", "extract", "score")]
        total = sum(p for p in parts if p is not None) if any(p is not None for p in parts) else None
        scores, ranks = _mapping(backbone.get("scores")), _mapping(backbone.get("ranks"))
        rows.append(
            {
                "rank": fmt_rank(backbone.get("rank")),
                "id": str(backbone.get("id", NA)),
                "mean_rank": fmt_fixed(backbone.get("mean_rank"), 2),
                "cells": [
                    {
                        "score": fmt_number(scores.get(e["name"])),
                        "rank": fmt_rank(ranks.get(e["name"])),
                        "top": as_float(ranks.get(e["name"])) == 1.0,
                    }
                    for e in estimators
                ],
                "feature_dim": fmt_int(backbone.get("feature_dim")),
                "weights_source": str(backbone.get("weights_source") or NA),
                "seconds": fmt_seconds(total),
                "seconds_detail": " · ".join(
                    f"{k} {fmt_seconds(v)}" for k, v in zip(("load", "extract", "score"), parts, strict=True)
                ),
                "cached": bool(backbone.get("from_cache")),
                "top_count": sum(as_float(ranks.get(e["name"])) == 1.0 for e in estimators),
            }
        )
    panels = [
        figures.BarPanel(
            title=f"{e['name']} {_direction(e.get('higher_is_better'))}",
            values=[_mapping(b.get("scores")).get(e["name"]) for b in backbones],
            labels=[labels[i] for i in ids],
            best=[i for i, b in enumerate(backbones) if as_float(_mapping(b.get("ranks")).get(e["name"])) == 1.0],
        )
        for e in estimators
    ]
    bars = figures.score_bars_figure(panels, title="score per backbone, by estimator") if panels and rows else None
    classes = [str(c) for c in _sequence(dataset.get("classes"))] or [
        str(name) for name, _ in sorted(_mapping(result.get("class_map")).items(), key=lambda kv: kv[1])
    ]
    counts = [v for v in (as_float(c) for c in _mapping(dataset.get("class_counts")).values()) if v is not None]
    skipped = _mapping(dataset.get("skipped"))
    failed = as_float(result.get("failed_images"))
    facts = [
        ("dataset", dataset_ref_label(dataset.get("ref"))),
        ("images", fmt_int(dataset.get("n_images"))),
        ("classes", fmt_int(dataset.get("n_classes") if dataset.get("n_classes") is not None else len(classes))),
        ("images per class", f"{min(counts):g} – {max(counts):g}" if counts else NA),
        ("skipped while listing", ", ".join(f"{reason}: {n}" for reason, n in skipped.items()) if skipped else "none"),
        ("undecodable, skipped", fmt_int(failed) if failed else "none"),
        ("splits", ", ".join(str(s) for s in _sequence(dataset.get("splits"))) or "none"),
        ("fingerprint", str(dataset.get("fingerprint") or NA)),
        ("total time", fmt_seconds(_mapping(result.get("seconds")).get("total"))),
    ]
    reference = dataset_ref_label(dataset.get("ref"))
    return _render(
        "ranking.html.j2",
        title=f"Ranking: {reference}",
        dataset_label=reference,
        facts=facts,
        classes=classes[:_MAX_CLASSES_LISTED],
        more_classes=max(0, len(classes) - _MAX_CLASSES_LISTED),
        estimators=[
            {
                "name": str(e["name"]),
                "direction": _direction(e.get("higher_is_better")),
                "reference": str(e.get("reference") or ""),
                "needs": ", ".join(str(n) for n in _sequence(e.get("needs"))),
            }
            for e in estimators
        ],
        rows=rows,
        winner=rows[0]["id"] if rows else None,
        bars=bars,
        prediction=_prediction_table(result, backbones),
    )


def _prediction_table(result: Mapping[str, Any], backbones: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Fused score, p(best) and predicted accuracies of a calibrated ranking; None for a mean-rank one."""
    fusion = _mapping(result.get("fusion"))
    if fusion.get("method") != "calibrated":
        return None

    def predicted(backbone: Mapping[str, Any], ground_truth: str) -> dict[str, str]:
        entry = _mapping(_mapping(backbone.get("predicted_accuracy")).get(ground_truth))
        return {"value": fmt_percent(entry.get("value")), "ci": fmt_ci(entry.get("low"), entry.get("high"), 100, 1)}

    calibration = _mapping(fusion.get("calibration"))
    resampling = _mapping(fusion.get("p_best"))
    loto = _mapping(calibration.get("loto"))
    return {
        "loto_mae": fmt_percent(loto.get("finetune_mae")),
        "loto_coverage": fmt_percent(loto.get("finetune_coverage"), 0),
        "members": ", ".join(str(m) for m in _sequence(fusion.get("members"))),
        "normalisation": str(fusion.get("normalisation") or NA),
        "calibration": str(calibration.get("path") or "in-memory calibration"),
        "created": str(calibration.get("created") or NA),
        "n_bootstrap": fmt_int(resampling.get("n_bootstrap")) if resampling else None,
        "note": str(fusion.get("note") or ""),
        "rows": [
            {
                "rank": fmt_rank(backbone.get("rank")),
                "id": str(backbone.get("id", NA)),
                "fused": fmt_fixed(backbone.get("fused_score"), 2),
                "p_best": fmt_fixed(backbone.get("p_best"), 2),
                "finetune": predicted(backbone, "finetune"),
                "linear_probe": predicted(backbone, "linear_probe"),
            }
            for backbone in backbones
        ],
    }
