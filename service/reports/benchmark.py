"""The benchmark report page: summary table and τw figure, one section per target, cost, and the honest reading.

The largest of the three view models (per-target tables and scatter panels, the summary and its reading), and it
shares nothing with the ranking and fine-tune pages beyond :mod:`service.reports._page`: hence a module of its own,
which :mod:`service.reports.render` dispatches to. It reads the typed model (:class:`service.contract.BenchmarkResult`);
the blocks the model keeps loose (``dict[str, Any]``: each target's backbone rows, the baselines, ``cost``,
``skipped``, the suite's definition, the environment's extra keys) are read as mappings, defensively.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from service.contract import BenchmarkResult
from service.contract.results import (
    BenchmarkTarget,
    Environment,
    MethodSummary,
    MetricSummary,
    benchmark_score,
)

from . import figures
from ._format import (
    NA,
    as_float,
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
from ._page import _direction, _mean_std_percent, _render, _typed_as

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


def _mapping(value: Any) -> Mapping[str, Any]:
    """A loose block's entry as a mapping (anything else reads as empty)."""
    return value if isinstance(value, Mapping) else {}


def _sequence(value: Any) -> Sequence[Any]:
    """A loose block's entry as a list (anything else reads as empty)."""
    return value if isinstance(value, list | tuple) else []


def _metric_cell(metric: str, value: Any, low: Any, high: Any) -> dict[str, str]:
    """``{"value", "ci"}`` strings for one metric; regret in percentage points, correlations with 3 decimals."""
    if metric == "top1_regret":
        number = as_float(value)
        return {
            "value": fmt_fixed(None if number is None else 100 * number, 1),
            "ci": fmt_ci(low, high, scale=100, decimals=1),
        }
    return {"value": fmt_fixed(value), "ci": fmt_ci(low, high)}


def _summary_metrics(stats: MethodSummary) -> dict[str, MetricSummary]:
    """A method's summary by metric key (the keys of ``_METRICS``)."""
    return {
        "weighted_tau": stats.weighted_tau,
        "kendall_tau": stats.kendall_tau,
        "pearson": stats.pearson,
        "top1_regret": stats.top1_regret,
    }


def _summary_cell(metric: str, stats: MethodSummary | None) -> dict[str, str]:
    if stats is None:
        return _metric_cell(metric, None, None, None)
    summary = _summary_metrics(stats)[metric]
    return _metric_cell(metric, summary.mean, summary.ci_low, summary.ci_high)


def _benchmark_methods(benchmark: BenchmarkResult) -> list[dict[str, Any]]:
    """The product's orders (default first), then estimators and baselines sorted by mean τw (n/a last), plus any
    method only the summary knows."""
    summary = benchmark.summary
    methods: dict[str, dict[str, Any]] = {}
    for column in benchmark.default_order.methods if benchmark.default_order is not None else []:
        methods[column.name] = {
            "name": column.name,
            "is_baseline": False,
            "is_product": True,
            "higher_is_better": column.higher_is_better,
            "about": column.description,
        }
    for estimator in benchmark.estimators:
        methods[estimator.name] = {
            "name": estimator.name,
            "is_baseline": False,
            "is_product": False,
            "higher_is_better": estimator.higher_is_better,
            "about": estimator.reference,
        }
    for entry in benchmark.baselines:  # loose: {"name", "higher_is_better", "description"}
        if entry.get("name") is not None:
            methods[str(entry["name"])] = {
                "name": str(entry["name"]),
                "is_baseline": True,
                "is_product": False,
                "higher_is_better": entry.get("higher_is_better", True),
                "about": entry.get("description") or "",
            }
    for name, info in summary.items():
        if name not in methods:
            methods[name] = {
                "name": name,
                "is_baseline": info.is_baseline,
                "is_product": info.is_product,
                "higher_is_better": True,
                "about": "",
            }
        else:
            methods[name]["is_baseline"] = info.is_baseline
            methods[name]["is_product"] = methods[name]["is_product"] or info.is_product
    order = list(methods)
    for method in methods.values():
        method["position"] = order.index(method["name"])
        stats = summary.get(method["name"])
        method["mean_tau"] = stats.weighted_tau.mean if stats is not None else None
        method["direction"] = _direction(method["higher_is_better"])
        method["cells"] = {metric: _summary_cell(metric, stats) for metric in _METRICS}
        method["n_targets"] = str(stats.weighted_tau.n_targets) if stats is not None else NA
    return sorted(
        methods.values(),
        key=lambda m: (
            not m["is_product"],
            order.index(m["name"]) if m["is_product"] else 0,  # the product's orders in their own order, default first
            m["mean_tau"] is None,
            -(m["mean_tau"] or 0.0),
            order.index(m["name"]),
        ),
    )


def _honest_reading(methods: Sequence[Mapping[str, Any]], summary: Mapping[str, MethodSummary]) -> list[str]:
    """Plain statements read off the summary numbers; no adjectives, no claims the numbers do not carry."""
    estimators = [m for m in methods if not m["is_baseline"] and not m["is_product"]]
    baselines = [m for m in methods if m["is_baseline"] and m["mean_tau"] is not None]
    sentences = _product_reading(methods, summary)
    if not estimators:
        return [*sentences, "The result has no estimator to compare."]
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
            lows = {name: stats.weighted_tau.ci_low for name, stats in summary.items()}
            clear = [m["name"] for m in above if (low := lows.get(m["name"])) is not None and low > top["mean_tau"]]
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
    regrets = [(m["name"], summary[m["name"]].top1_regret.mean) for m in scored]  # scored: in the summary
    present = [(name, value) for name, value in regrets if value is not None]
    if present:
        name, value = min(present, key=lambda item: item[1])
        sentences.append(
            f"The lowest mean top-1 regret among the estimators is {name}'s ({100 * value:.1f} accuracy points)."
        )
    if missing:
        sentences.append(f"No mean τw (n/a) for: {', '.join(missing)}.")
    return sentences


#: How the honest reading names the product's orders.
_PRODUCT_LABELS = {
    "default": "The default order (what `rank` returns with default settings)",
    "predicted_accuracy": "The order by predicted accuracy",
}


def _product_reading(methods: Sequence[Mapping[str, Any]], summary: Mapping[str, MethodSummary]) -> list[str]:
    """One sentence per product order: its mean τw (with interval) and mean top-1 regret."""
    sentences = []
    for method in (m for m in methods if m["is_product"]):
        label = _PRODUCT_LABELS.get(method["name"], f"The product's {method['name']} order")
        stats = summary.get(method["name"])
        if stats is None or method["mean_tau"] is None:
            sentences.append(f"{label} has no mean τw (n/a).")
            continue
        ci = method["cells"]["weighted_tau"]["ci"]
        regret = stats.top1_regret.mean
        sentences.append(
            f"{label} has a mean τw of {method['mean_tau']:.3f}"
            + (f" (95 % CI {ci})" if ci else "")
            + (f" and a mean top-1 regret of {100 * regret:.1f} accuracy points" if regret is not None else "")
            + f", over {method['n_targets']} target(s)."
        )
    return sentences


def _checks_view(benchmark: BenchmarkResult) -> dict[str, Any]:
    """The p(best) check in words, and the ground-truth disagreements as warnings."""
    check = benchmark.p_best_check
    p_best: list[str] = []
    if check is not None:
        p_best.append(
            f"With {check.n_bootstrap} half-samples per target, a backbone got p_best ≥ 0.5 on {check.n_confident} of "
            f"{check.n_targets} target(s) and was the best by fine-tuned accuracy on {check.n_confident_best} of them; "
            f"no backbone reached 0.5 on {check.n_unconfident}."
        )
        p_best.append(
            f"The most probable backbone was the best on {check.n_top_best} of {check.n_targets} target(s), with a "
            f"mean p_best of {fmt_fixed(check.mean_top_p_best, 2)}; the actual best had a mean p_best of "
            f"{fmt_fixed(check.mean_p_best_of_best, 2)} (a calibrated p_best gives the best about the share of "
            "targets on which the most probable one is the best)."
        )
    flags = benchmark.ground_truth_flags
    return {
        "p_best": p_best,
        "flags": [flag.message for flag in flags or []],
        "flags_checked": flags is not None,
    }


def honest_reading(result: BenchmarkResult | Mapping[str, Any]) -> list[str]:
    """The "honest reading" of a benchmark result: factual sentences from its summary (no figures drawn).

    Which estimators have a higher mean τw than the best baseline (and whether their interval clears it),
    which are below zero, the lowest top-1 regret, and which have no mean at all. ``result`` is the typed
    model or its JSON document (validated first, as :func:`render_benchmark_report` does).
    """
    benchmark = _typed_as(result, BenchmarkResult, "benchmark")
    return _honest_reading(_benchmark_methods(benchmark), benchmark.summary)


def _accuracy(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """A backbone row's ``{"mean", "std", "per_seed"}`` accuracy (null when it was not measured)."""
    return _mapping(row.get("accuracy"))


def _target_view(target: BenchmarkTarget, methods: Sequence[Mapping[str, Any]], index: int) -> dict[str, Any]:
    backbones = sorted(
        target.backbones,  # loose rows: {"id", "scores", "accuracy", "linear_probe_accuracy", ...}
        key=lambda b: (as_float(_accuracy(b).get("mean")) is None, -(as_float(_accuracy(b).get("mean")) or 0.0)),
    )
    ids = [str(b.get("id", NA)) for b in backbones]
    labels = short_names(ids)
    estimators = [m for m in methods if not m["is_baseline"]]
    estimator_order = sorted(estimators, key=lambda m: m["position"])  # the result's order, same on every target
    actual = [as_float(_accuracy(b).get("mean")) for b in backbones]
    actual_ranks = ranks_of(actual)
    method_ranks = {
        m["name"]: ranks_of(
            [benchmark_score(b, m["name"]) for b in backbones], higher_is_better=m["higher_is_better"] is not False
        )
        for m in estimator_order
    }
    has_p_best = any(as_float(b.get("p_best")) is not None for b in backbones)
    rows = []
    for position, backbone in enumerate(backbones):
        accuracy = _accuracy(backbone)
        rows.append(
            {
                "actual_rank": fmt_rank(actual_ranks[position]),
                "id": ids[position],
                "accuracy": _mean_std_percent(accuracy.get("mean"), accuracy.get("std")),
                "methods": [
                    {
                        "score": fmt_number(benchmark_score(backbone, m["name"])),
                        "rank": fmt_rank(method_ranks[m["name"]][position]),
                        "top": method_ranks[m["name"]][position] == 1.0,
                    }
                    for m in estimator_order
                ],
                "p_best": fmt_fixed(backbone.get("p_best"), 2),
                "linear_probe": fmt_percent(backbone.get("linear_probe_accuracy")),
                "source_accuracy": fmt_percent(backbone.get("source_accuracy")),
                "feature_dim": fmt_int(backbone.get("feature_dim")),
            }
        )
    per_method = []
    panels = []
    for method in methods:
        stats = target.metrics.get(method["name"]) or {}  # null: not computable on this target
        cells = {}
        for metric in _METRICS:
            entry = stats.get(metric) or {}
            cells[metric] = _metric_cell(metric, entry.get("value"), entry.get("ci_low"), entry.get("ci_high"))
        tau = as_float((stats.get("weighted_tau") or {}).get("value"))
        per_method.append(
            {
                "name": method["name"],
                "is_baseline": method["is_baseline"],
                "is_product": method["is_product"],
                "cells": cells,
            }
        )
        panels.append(
            figures.ScatterPanel(
                title=f"{method['name']} {method['direction']}   τw = {NA if tau is None else f'{tau:.2f}'}",
                x=[benchmark_score(b, method["name"]) for b in backbones],
                y=[None if a is None else 100 * a for a in actual],
                labels=[labels[i] for i in ids],
                is_baseline=method["is_baseline"],
                is_product=method["is_product"],
            )
        )
    name = target.name
    notes = []
    if len(backbones) < 2:
        notes.append("Fewer than two backbones: rank correlations are undefined (n/a).")
    if target.default_order is not None:
        notes.append(f"Default order here: {target.default_order.note}.")
    scatter = (
        figures.scatter_panels_figure(panels, title=f"{name}: score vs actual accuracy", ylabel="actual accuracy (%)")
        if panels
        else None
    )
    return {
        "name": name,
        "anchor": f"target-{index + 1}-{slug(name)}",
        "facts": [
            ("dataset", target.dataset),
            ("relation to the sources", target.relation or NA),
            ("classes", fmt_int(target.n_classes)),
            ("images ranked on", fmt_int(target.n_rank_images)),
            ("test images", fmt_int(target.n_test_images)),
            ("backbones", str(len(backbones))),
        ],
        "estimators": estimator_order,
        "has_p_best": has_p_best,
        "rows": rows,
        "per_method": per_method,
        "scatter": scatter,
        "notes": notes,
    }


def _environment_facts(environment: Environment, created: str) -> list[tuple[str, str]]:
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
    # Loose: the model keeps keys it does not name, so the rest is listed from its JSON document.
    document = environment.model_dump(mode="json")
    facts = [(key, NA if document.get(key) is None else str(document[key])) for key in keys]
    facts += [(str(k), str(v)) for k, v in document.items() if k not in keys]
    facts.append(("created", created or NA))
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


def _calibration_line(benchmark: BenchmarkResult) -> str | None:
    """Which calibration the product's orders applied (None: the result does not score them)."""
    order = benchmark.default_order
    if order is None:
        return None
    if order.calibration is None:
        return "The default order applied no calibration: it is the mean of the per-estimator ranks."
    calibration = order.calibration
    fusion = order.fusion or {}
    members = ", ".join(str(m) for m in fusion.get("members") or []) or NA
    line = (
        f"The default order applied the calibration {calibration.path or NA} (created {calibration.created or NA}): "
        f"a {fusion.get('normalisation', NA)} fusion of {members}."
    )
    fitted_on = [_mapping(entry) for entry in _sequence(calibration.source.get("results"))]
    if any(e.get("created") == benchmark.created and e.get("suite") == benchmark.suite.name for e in fitted_on):
        loto = calibration.loto.fused_mean_weighted_tau
        line += " It was fitted on this result, so the product's numbers here are in-sample" + (
            f"; its leave-one-target-out mean τw was {loto:.3f}." if loto is not None else "."
        )
    return line


def _method_interval(method: Mapping[str, Any], stats: MethodSummary | None) -> figures.MethodInterval:
    """One bar of the τw figure: the method's mean over targets and its 95 % interval."""
    tau = stats.weighted_tau if stats is not None else None
    return figures.MethodInterval(
        name=method["name"] + (" (baseline)" if method["is_baseline"] else ""),
        mean=method["mean_tau"],
        low=tau.ci_low if tau is not None else None,
        high=tau.ci_high if tau is not None else None,
        is_baseline=method["is_baseline"],
        is_product=method["is_product"],
    )


def render_benchmark_report(result: BenchmarkResult | Mapping[str, Any]) -> str:
    """The benchmark page: summary table and τw figure, one section per target, cost, honest reading.

    Parameters
    ----------
    result : BenchmarkResult or dict
        A benchmark result: its typed model, or its JSON document (any schema version), which is validated into the
        model first (:func:`service.reports._page.typed_result`); anything else, or a document that does not
        validate, is an :class:`~service.errors.InvalidResult`. Nulls and non-finite numbers show as "n/a".

    Returns
    -------
    str
        One self-contained HTML document.
    """
    benchmark = _typed_as(result, BenchmarkResult, "benchmark")
    suite = benchmark.suite
    summary = benchmark.summary
    methods = _benchmark_methods(benchmark)
    targets = [_target_view(t, methods, i) for i, t in enumerate(benchmark.targets)]
    tau_figure = (
        figures.tau_interval_figure(
            [_method_interval(m, summary.get(m["name"])) for m in methods],
            title="τw per method with 95% CI across targets",
        )
        if methods
        else None
    )
    products = [m for m in methods if m["is_product"]]
    estimators = [m for m in methods if not m["is_baseline"] and not m["is_product"]]
    baselines = [m for m in methods if m["is_baseline"]]
    best_estimator = next((m for m in estimators if m["mean_tau"] is not None), None)
    best_baseline = next((m for m in baselines if m["mean_tau"] is not None), None)
    cost = _cost_view(benchmark.cost or {})
    n_backbones = len({str(b.get("id")) for t in benchmark.targets for b in t.backbones})
    ground_truth = {"finetune": "fine-tuned accuracy (measured here)", "published": "published accuracies"}
    default = next((m for m in products if m["name"] == "default"), None)
    cards = [
        ("targets", str(len(targets))),
        ("backbones", str(n_backbones)),
        ("estimators / baselines", f"{len(estimators)} / {len(baselines)}"),
        ("best estimator τw", f"{best_estimator['mean_tau']:.3f} ({best_estimator['name']})" if best_estimator else NA),
        ("best baseline τw", f"{best_baseline['mean_tau']:.3f} ({best_baseline['name']})" if best_baseline else NA),
    ]
    if default is not None:
        tau = default["mean_tau"]
        cards.insert(0, ("default order τw (what rank returns)", NA if tau is None else f"{tau:.3f}"))
    if cost and cost["ratio"] != NA:
        cards.append(("fine-tuning / ranking time", cost["ratio"]))
    skipped_lines = [  # loose: {"target"?, "backbone"?, "reason"} per skipped target or backbone
        f"{entry.get('target', '')} {entry.get('backbone', '')}: {entry.get('reason', NA)}".strip()
        for key in ("targets", "backbones")
        for entry in benchmark.skipped.get(key, [])
    ]
    return _render(
        "benchmark.html.j2",
        title=f"Benchmark: {suite.name or 'unnamed suite'}",
        suite_name=suite.name or NA,
        description=suite.description,
        ground_truth=ground_truth.get(suite.ground_truth, suite.ground_truth or NA),
        created=benchmark.created or NA,
        fingerprint=benchmark.environment.fingerprint or NA,
        environment=_environment_facts(benchmark.environment, benchmark.created),
        definition=json.dumps(suite.definition, indent=2, sort_keys=True, default=str) if suite.definition else "",
        cards=cards,
        metrics=_METRICS,
        methods=methods,
        tau_figure=tau_figure,
        reading=_honest_reading(methods, summary),
        checks=_checks_view(benchmark),
        calibration=_calibration_line(benchmark),
        targets=targets,
        cost=cost,
        total_seconds=fmt_seconds(benchmark.seconds.total if benchmark.seconds is not None else None),
        skipped=skipped_lines,
    )
