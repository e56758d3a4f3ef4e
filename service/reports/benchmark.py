"""The benchmark report page: summary table and τw figure, one section per target, cost, and the honest reading.

The largest of the three view models (per-target tables and scatter panels, the summary and its reading), and it
shares nothing with the ranking and fine-tune pages beyond :mod:`service.reports._page`: hence a module of its own,
which :mod:`service.reports.render` dispatches to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from service.errors import InvalidResult

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
    ranks_of,
    short_names,
    slug,
)
from ._page import _direction, _malformed_is_invalid, _mapping, _mean_std_percent, _render, _sequence

__all__ = ["honest_reading", "render_benchmark_report"]

#: Metric key -> (column label, description); report order.
_METRICS: dict[str, tuple[str, str]] = {
    "weighted_tau": ("τw", "weighted Kendall τ between score and actual accuracy (1 = same order, 0 = unrelated)"),
    "kendall_tau": ("Kendall τ", "Kendall's τ-b between score and actual accuracy"),
    "pearson": ("Pearson r", "Pearson correlation between score and actual accuracy"),
    "top1_regret": (
        "top-1 regret (pp)",
        "accuracy of the best backbone minus that of the method's top pick, in percentage points (0 = picked the best)",
    ),
}


def _metric_cell(metric: str, stats: Mapping[str, Any], value_key: str) -> dict[str, str]:
    """``{"value", "ci"}`` strings for one metric; regret in percentage points, correlations with 3 decimals."""
    if metric == "top1_regret":
        value = as_float(stats.get(value_key))
        return {
            "value": fmt_fixed(None if value is None else 100 * value, 1),
            "ci": fmt_ci(stats.get("ci_low"), stats.get("ci_high"), scale=100, decimals=1),
        }
    return {"value": fmt_fixed(stats.get(value_key)), "ci": fmt_ci(stats.get("ci_low"), stats.get("ci_high"))}


def _benchmark_methods(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Estimators then baselines, plus any method only the summary knows; sorted by mean τw (n/a last)."""
    summary = _mapping(result.get("summary"))
    methods: dict[str, dict[str, Any]] = {}
    for entry in _sequence(result.get("estimators")):
        entry = _mapping(entry)
        if entry.get("name") is not None:
            methods[str(entry["name"])] = {
                "name": str(entry["name"]),
                "is_baseline": False,
                "higher_is_better": entry.get("higher_is_better", True),
                "about": entry.get("reference") or "",
            }
    for entry in _sequence(result.get("baselines")):
        entry = _mapping(entry)
        if entry.get("name") is not None:
            methods[str(entry["name"])] = {
                "name": str(entry["name"]),
                "is_baseline": True,
                "higher_is_better": entry.get("higher_is_better", True),
                "about": entry.get("description") or "",
            }
    for name, stats in summary.items():
        stats = _mapping(stats)
        if name not in methods:
            methods[name] = {
                "name": name,
                "is_baseline": bool(stats.get("is_baseline")),
                "higher_is_better": True,
                "about": "",
            }
        elif "is_baseline" in stats:
            methods[name]["is_baseline"] = bool(stats["is_baseline"])
    order = list(methods)
    for method in methods.values():
        method["position"] = order.index(method["name"])
        stats = _mapping(summary.get(method["name"]))
        method["mean_tau"] = as_float(_mapping(stats.get("weighted_tau")).get("mean"))
        method["direction"] = _direction(method["higher_is_better"])
        method["cells"] = {metric: _metric_cell(metric, _mapping(stats.get(metric)), "mean") for metric in _METRICS}
        n_targets = _mapping(stats.get("weighted_tau")).get("n_targets")
        method["n_targets"] = str(n_targets) if isinstance(n_targets, int) else NA
    return sorted(
        methods.values(),
        key=lambda m: (m["mean_tau"] is None, -(m["mean_tau"] or 0.0), order.index(m["name"])),
    )


def _honest_reading(methods: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> list[str]:
    """Plain statements read off the summary numbers; no adjectives, no claims the numbers do not carry."""
    estimators = [m for m in methods if not m["is_baseline"]]
    baselines = [m for m in methods if m["is_baseline"] and m["mean_tau"] is not None]
    sentences: list[str] = []
    if not estimators:
        return ["The result has no estimator to compare."]
    scored = [m for m in estimators if m["mean_tau"] is not None]
    missing = [m["name"] for m in estimators if m["mean_tau"] is None]
    if scored:
        best = scored[0]
        sentences.append(
            f"The highest mean τw among the estimators is {best['name']}'s ({best['mean_tau']:.3f}"
            + (f", 95 % CI {best['cells']['weighted_tau']['ci']}" if best["cells"]["weighted_tau"]["ci"] else "")
            + f", over {best['n_targets']} target(s))."
        )
    if baselines:
        top = baselines[0]
        above = [m for m in scored if m["mean_tau"] > top["mean_tau"]]
        sentences.append(f"The best baseline by mean τw is {top['name']} ({top['mean_tau']:.3f}).")
        if above:
            listed = ", ".join(f"{m['name']} ({m['mean_tau']:.3f})" for m in above)
            sentences.append(f"{len(above)} of {len(estimators)} estimator(s) have a higher mean τw: {listed}.")
            clear = [
                m["name"]
                for m in above
                if (low := as_float(_mapping(_mapping(summary.get(m["name"])).get("weighted_tau")).get("ci_low")))
                is not None
                and low > top["mean_tau"]
            ]
            if clear:
                sentences.append(
                    f"Of these, the 95 % CI lower bound lies above the best baseline's mean for: {', '.join(clear)}."
                )
            else:
                sentences.append("None of them has a 95 % CI lower bound above the best baseline's mean.")
        else:
            sentences.append(f"No estimator has a higher mean τw than {top['name']}.")
    else:
        sentences.append("The result has no baseline with a mean τw to compare against.")
    below = [m for m in scored if m["mean_tau"] < 0]
    if below:
        listed = ", ".join(f"{m['name']} ({m['mean_tau']:.3f})" for m in below)
        sentences.append(f"Mean τw below zero (ranks worse than chance on average): {listed}.")
    else:
        sentences.append("No estimator has a mean τw below zero.")
    regrets = [
        (m["name"], as_float(_mapping(_mapping(summary.get(m["name"])).get("top1_regret")).get("mean"))) for m in scored
    ]
    present = [(name, value) for name, value in regrets if value is not None]
    if present:
        name, value = min(present, key=lambda item: item[1])
        sentences.append(
            f"The lowest mean top-1 regret among the estimators is {name}'s ({100 * value:.1f} accuracy points)."
        )
    if missing:
        sentences.append(f"No mean τw (n/a) for: {', '.join(missing)}.")
    return sentences


def honest_reading(result: Mapping[str, Any]) -> list[str]:
    """The "honest reading" of a benchmark result: factual sentences from its summary (no figures drawn).

    Which estimators have a higher mean τw than the best baseline (and whether their interval clears it),
    which are below zero, the lowest top-1 regret, and which have no mean at all.
    """
    if not isinstance(result, Mapping):
        raise InvalidResult(f"a benchmark result must be a JSON object, got {type(result).__name__}")
    return _honest_reading(_benchmark_methods(result), _mapping(result.get("summary")))


def _target_view(target: Mapping[str, Any], methods: Sequence[Mapping[str, Any]], index: int) -> dict[str, Any]:
    backbones = [_mapping(b) for b in _sequence(target.get("backbones"))]
    backbones.sort(
        key=lambda b: (
            as_float(_mapping(b.get("accuracy")).get("mean")) is None,
            -(as_float(_mapping(b.get("accuracy")).get("mean")) or 0.0),
        )
    )
    ids = [str(b.get("id", NA)) for b in backbones]
    labels = short_names(ids)
    estimators = [m for m in methods if not m["is_baseline"]]
    estimator_order = sorted(estimators, key=lambda m: m["position"])  # the result's order, same on every target
    actual = [as_float(_mapping(b.get("accuracy")).get("mean")) for b in backbones]
    actual_ranks = ranks_of(actual)
    method_ranks = {
        m["name"]: ranks_of(
            [_mapping(b.get("scores")).get(m["name"]) for b in backbones],
            higher_is_better=m["higher_is_better"] is not False,
        )
        for m in estimator_order
    }
    rows = []
    for position, backbone in enumerate(backbones):
        scores = _mapping(backbone.get("scores"))
        rows.append(
            {
                "actual_rank": fmt_rank(actual_ranks[position]),
                "id": ids[position],
                "accuracy": _mean_std_percent(_mapping(backbone.get("accuracy"))),
                "methods": [
                    {
                        "score": fmt_number(scores.get(m["name"])),
                        "rank": fmt_rank(method_ranks[m["name"]][position]),
                        "top": method_ranks[m["name"]][position] == 1.0,
                    }
                    for m in estimator_order
                ],
                "linear_probe": fmt_percent(backbone.get("linear_probe_accuracy")),
                "source_accuracy": fmt_percent(backbone.get("source_accuracy")),
                "feature_dim": fmt_int(backbone.get("feature_dim")),
            }
        )
    metrics = _mapping(target.get("metrics"))
    per_method = []
    panels = []
    for method in methods:
        stats = _mapping(metrics.get(method["name"]))
        tau = as_float(_mapping(stats.get("weighted_tau")).get("value"))
        per_method.append(
            {
                "name": method["name"],
                "is_baseline": method["is_baseline"],
                "cells": {metric: _metric_cell(metric, _mapping(stats.get(metric)), "value") for metric in _METRICS},
            }
        )
        panels.append(
            figures.ScatterPanel(
                title=f"{method['name']} {method['direction']}   τw = {NA if tau is None else f'{tau:.2f}'}",
                x=[_mapping(b.get("scores")).get(method["name"]) for b in backbones],
                y=[None if a is None else 100 * a for a in actual],
                labels=[labels[i] for i in ids],
                is_baseline=method["is_baseline"],
            )
        )
    name = str(target.get("name", f"target {index + 1}"))
    notes = []
    if len(backbones) < 2:
        notes.append("Fewer than two backbones: rank correlations are undefined (n/a).")
    scatter = (
        figures.scatter_panels_figure(panels, title=f"{name}: score vs actual accuracy", ylabel="actual accuracy (%)")
        if panels
        else None
    )
    return {
        "name": name,
        "anchor": f"target-{index + 1}-{slug(name)}",
        "facts": [
            ("dataset", dataset_ref_label(target.get("dataset"))),
            ("relation to the sources", str(target.get("relation") or NA)),
            ("classes", fmt_int(target.get("n_classes"))),
            ("images ranked on", fmt_int(target.get("n_rank_images"))),
            ("test images", fmt_int(target.get("n_test_images"))),
            ("backbones", str(len(backbones))),
        ],
        "estimators": estimator_order,
        "rows": rows,
        "per_method": per_method,
        "scatter": scatter,
        "notes": notes,
    }


def _environment_facts(environment: Mapping[str, Any], created: Any) -> list[tuple[str, str]]:
    keys = (
        "fingerprint",
        "device",
        "torch",
        "timm",
        "numpy",
        "python",
        "platform",
        "cpu_count",
        "threads",
        "git_commit",
    )
    facts = [(key, NA if environment.get(key) is None else str(environment[key])) for key in keys]
    facts += [(str(k), str(v)) for k, v in environment.items() if k not in keys]
    facts.append(("created", str(created) if created else NA))
    return facts


def _cost_view(cost: Mapping[str, Any]) -> dict[str, Any] | None:
    if not cost:
        return None
    ratio = as_float(cost.get("ratio"))
    # Published ground truth: nothing was fine-tuned, and the per-backbone zeros mean "not measured".
    tuned = as_float(cost.get("finetune_seconds")) is not None
    per_backbone = []
    for entry in _sequence(cost.get("per_backbone")):
        entry = _mapping(entry)
        rank_s, tune_s = as_float(entry.get("rank_seconds")), as_float(entry.get("finetune_seconds"))
        tune_s = tune_s if tuned else None
        per_backbone.append(
            {
                "id": str(entry.get("id", NA)),
                "rank": fmt_seconds(rank_s),
                "finetune": fmt_seconds(tune_s),
                "ratio": f"{tune_s / rank_s:,.0f}×" if rank_s and tune_s else NA,
            }
        )
    return {
        "ranking": fmt_seconds(cost.get("ranking_seconds")),
        "finetune": fmt_seconds(cost.get("finetune_seconds")),
        "ratio": NA if ratio is None else f"{ratio:,.0f}×",
        "per_backbone": per_backbone,
    }


@_malformed_is_invalid("benchmark")
def render_benchmark_report(result: Mapping[str, Any]) -> str:
    """The benchmark page: summary table and τw figure, one section per target, cost, honest reading.

    Parameters
    ----------
    result : dict
        A benchmark result (``"kind": "benchmark"``, schema in ``/work/notes/benchmark_schema.md`` and
        ``service.pipeline.benchmark.benchmark``). Nulls, non-finite numbers and missing optional keys show as "n/a".

    Returns
    -------
    str
        One self-contained HTML document.
    """
    suite = _mapping(result.get("suite"))
    summary = _mapping(result.get("summary"))
    methods = _benchmark_methods(result)
    targets = [_target_view(_mapping(t), methods, i) for i, t in enumerate(_sequence(result.get("targets")))]
    tau_figure = (
        figures.tau_interval_figure(
            [
                figures.MethodInterval(
                    name=m["name"] + (" (baseline)" if m["is_baseline"] else ""),
                    mean=m["mean_tau"],
                    low=as_float(_mapping(_mapping(summary.get(m["name"])).get("weighted_tau")).get("ci_low")),
                    high=as_float(_mapping(_mapping(summary.get(m["name"])).get("weighted_tau")).get("ci_high")),
                    is_baseline=m["is_baseline"],
                )
                for m in methods
            ],
            title="τw per method with 95% CI across targets",
        )
        if methods
        else None
    )
    estimators = [m for m in methods if not m["is_baseline"]]
    baselines = [m for m in methods if m["is_baseline"]]
    best_estimator = next((m for m in estimators if m["mean_tau"] is not None), None)
    best_baseline = next((m for m in baselines if m["mean_tau"] is not None), None)
    cost = _cost_view(_mapping(result.get("cost")))
    n_backbones = len(
        {
            str(_mapping(b).get("id"))
            for t in _sequence(result.get("targets"))
            for b in _sequence(_mapping(t).get("backbones"))
        }
    )
    ground_truth = {"finetune": "fine-tuned accuracy (measured here)", "published": "published accuracies"}
    cards = [
        ("targets", str(len(targets))),
        ("backbones", str(n_backbones)),
        ("estimators / baselines", f"{len(estimators)} / {len(baselines)}"),
        ("best estimator τw", f"{best_estimator['mean_tau']:.3f} ({best_estimator['name']})" if best_estimator else NA),
        ("best baseline τw", f"{best_baseline['mean_tau']:.3f} ({best_baseline['name']})" if best_baseline else NA),
    ]
    if cost and cost["ratio"] != NA:
        cards.append(("fine-tuning / ranking time", cost["ratio"]))
    definition = suite.get("definition")
    skipped = _mapping(result.get("skipped"))
    skipped_lines = [
        f"{_mapping(entry).get('target', '')} {_mapping(entry).get('backbone', '')}: "
        f"{_mapping(entry).get('reason', NA)}".strip()
        if isinstance(entry, Mapping)
        else str(entry)
        for key in ("targets", "backbones")
        for entry in _sequence(skipped.get(key))
    ]
    return _render(
        "benchmark.html.j2",
        title=f"Benchmark: {suite.get('name') or 'unnamed suite'}",
        suite_name=str(suite.get("name") or NA),
        description=str(suite.get("description") or ""),
        ground_truth=ground_truth.get(str(suite.get("ground_truth")), str(suite.get("ground_truth") or NA)),
        created=str(result.get("created") or NA),
        fingerprint=str(_mapping(result.get("environment")).get("fingerprint") or NA),
        environment=_environment_facts(_mapping(result.get("environment")), result.get("created")),
        definition=json.dumps(definition, indent=2, sort_keys=True, default=str) if definition else "",
        cards=cards,
        metrics=_METRICS,
        methods=methods,
        tau_figure=tau_figure,
        reading=_honest_reading(methods, summary),
        targets=targets,
        cost=cost,
        total_seconds=fmt_seconds(_mapping(result.get("seconds")).get("total")),
        skipped=skipped_lines,
    )
