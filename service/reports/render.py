"""Build the report pages: result dict -> view model (formatted strings, figures) -> jinja2 template -> HTML.

Every page is one self-contained HTML file: inline CSS, figures as base64 PNG ``<img>`` tags, no script,
no external font, so it can be mailed, archived or opened offline. Templates autoescape everything:
backbone ids, class names and dataset paths come from users.

The view models are built here, not in the templates, so that a null, a missing key or a non-finite
number becomes "n/a" in one place and the templates only lay out strings.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jinja2
from pydantic import BaseModel, ValidationError

from service.contract import AnyResult, BenchmarkResult, FinetuneResult, RankingResult, load_result
from service.contract import result_kind as contract_result_kind
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

__all__ = [
    "honest_reading",
    "render_benchmark_report",
    "render_finetune_report",
    "render_ranking_report",
    "render_report",
    "result_kind",
    "typed_result",
]

_logger = logging.getLogger(__name__)

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
_MAX_CLASSES_LISTED = 60


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("service.reports", "templates"),
        autoescape=True,  # ids, class names and paths are user input
        undefined=jinja2.StrictUndefined,  # a typo in a template is an error, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment


def _render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


F = TypeVar("F", bound=Callable[..., str])


def _malformed_is_invalid(kind: str) -> Callable[[F], F]:
    """A result whose structure is wrong (a list where an object belongs ...) -> InvalidResult, not a TypeError."""

    def decorate(render: F) -> F:
        @functools.wraps(render)
        def wrapper(result: Any) -> str:
            if not isinstance(result, Mapping):
                raise InvalidResult(f"a {kind} result must be a JSON object, got {type(result).__name__}")
            try:
                return render(result)
            except InvalidResult:
                raise
            except (AttributeError, KeyError, TypeError, IndexError, ValueError) as err:
                _logger.debug("cannot render %s result", kind, exc_info=True)
                raise InvalidResult(f"malformed {kind} result ({type(err).__name__}: {err})") from err

        return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature F describes

    return decorate


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sequence(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else []


def _metric_cell(metric: str, stats: Mapping[str, Any], value_key: str) -> dict[str, str]:
    """``{"value", "ci"}`` strings for one metric; regret in percentage points, correlations with 3 decimals."""
    if metric == "top1_regret":
        value = as_float(stats.get(value_key))
        return {
            "value": fmt_fixed(None if value is None else 100 * value, 1),
            "ci": fmt_ci(stats.get("ci_low"), stats.get("ci_high"), scale=100, decimals=1),
        }
    return {"value": fmt_fixed(stats.get(value_key)), "ci": fmt_ci(stats.get("ci_low"), stats.get("ci_high"))}


def _direction(higher_is_better: Any) -> str:
    return "↓" if higher_is_better is False else "↑"


# --- benchmark ------------------------------------------------------------------------------------------------------


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


# --- ranking --------------------------------------------------------------------------------------------------------


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


# --- fine-tune ------------------------------------------------------------------------------------------------------


def _class_names(result: Mapping[str, Any], n: int) -> list[str]:
    class_map = _mapping(result.get("class_map"))
    names = [str(name) for name, _ in sorted(class_map.items(), key=lambda kv: as_float(kv[1]) or 0.0)]
    return names if len(names) == n or n == 0 else [*names, *(str(i) for i in range(len(names), n))][:n]


def _lr_rows(value: Any, chosen: Any) -> list[dict[str, Any]]:
    """``{lr: acc}``, ``[{"lr", "accuracy"}]`` or ``[[lr, acc]]`` -> rows; the chosen lr is flagged."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        pairs = []
        for item in _sequence(value):
            if isinstance(item, Mapping):
                pairs.append((item.get("lr"), item.get("accuracy", item.get("val_accuracy"))))
            elif isinstance(item, list | tuple) and len(item) == 2:
                pairs.append((item[0], item[1]))
    chosen_lr = as_float(chosen)
    rows = []
    for lr, accuracy in pairs:
        if isinstance(accuracy, Mapping):  # {"mean", "std", ...} per lr
            accuracy = accuracy.get("mean")
        try:
            lr_value: float | None = float(lr)
        except (TypeError, ValueError):
            lr_value = None
        rows.append(
            {
                "lr": fmt_number(lr_value) if lr_value is not None else str(lr),
                "accuracy": fmt_percent(accuracy),
                "chosen": chosen_lr is not None and lr_value is not None and abs(lr_value - chosen_lr) <= 1e-12,
            }
        )
    return rows


def _mean_std_percent(value: Any) -> str:
    """``{"mean", "std"}`` (or a bare fraction) as ``71.2 ± 1.3``, in percent."""
    if not isinstance(value, Mapping):
        return fmt_percent(value)
    mean, std = fmt_percent(value.get("mean")), as_float(value.get("std"))
    return mean if std is None or mean == NA else f"{mean} ± {100 * std:.1f}"


@_malformed_is_invalid("fine-tune")
def render_finetune_report(result: Mapping[str, Any]) -> str:
    """The fine-tune page: test accuracy, validation accuracy per learning rate, per-class accuracy, confusion.

    Parameters
    ----------
    result : dict
        A fine-tune result (``service.pipeline.finetune.finetune.finetune``).

    Returns
    -------
    str
        One self-contained HTML document.
    """
    backbone = result.get("backbone")
    backbone_id = str(_mapping(backbone).get("id", NA)) if isinstance(backbone, Mapping) else str(backbone or NA)
    dataset = result.get("dataset")
    dataset_label = dataset_ref_label(_mapping(dataset).get("ref", dataset))
    test = _mapping(result.get("test_accuracy"))
    matrix = [list(row) for row in _sequence(result.get("confusion_matrix")) if isinstance(row, list | tuple)]
    n = len(matrix) if matrix and all(len(row) == len(matrix) for row in matrix) else 0
    per_class_value = result.get("per_class_accuracy")
    class_names = _class_names(result, n)
    if isinstance(per_class_value, Mapping):
        per_class_pairs = [(str(k), v) for k, v in per_class_value.items()]
    else:
        values = list(_sequence(per_class_value))
        names = _class_names(result, len(values))
        per_class_pairs = list(zip(names, values, strict=False))
    support = {class_names[i]: sum(as_float(v) or 0.0 for v in row) for i, row in enumerate(matrix)} if n else {}
    per_class = [
        {
            "name": name,
            "accuracy": fmt_percent(acc),
            "support": fmt_int(support.get(name)),
        }
        for name, acc in per_class_pairs
    ]
    heatmap = (
        figures.confusion_figure(
            [[as_float(v) or 0.0 for v in row] for row in matrix], class_names, title="confusion matrix (test split)"
        )
        if n
        else None
    )
    config = _mapping(result.get("config"))
    weights = _mapping(result.get("weights"))
    per_seed = ", ".join(fmt_percent(v) for v in _sequence(test.get("per_seed")))
    seconds = result.get("seconds")
    facts = [
        ("backbone", backbone_id),
        ("dataset", dataset_label),
        ("strategy", str(result.get("strategy") or NA)),
        ("chosen learning rate", fmt_number(result.get("chosen_lr"))),
        ("seeds", ", ".join(str(s) for s in _sequence(result.get("seeds"))) or NA),
        ("validation accuracy (%)", _mean_std_percent(result.get("val_accuracy"))),
        ("chance accuracy (%)", fmt_percent(result.get("chance_accuracy"))),
        ("time", fmt_seconds(_mapping(seconds).get("total") if isinstance(seconds, Mapping) else seconds)),
        ("training images / s", fmt_number(result.get("images_per_second"), 3)),
        ("weights", str(weights.get("path") or "not saved")),
        ("weights sha256", str(weights.get("sha256") or NA)),
    ]
    splits = [
        {
            "name": str(name),
            "images": fmt_int(_mapping(info).get("n_images")),
            "failed": fmt_int(_mapping(info).get("n_failed")),
            "source": str(_mapping(info).get("source") or NA),
        }
        for name, info in _mapping(_mapping(dataset).get("splits")).items()
    ]
    return _render(
        "finetune.html.j2",
        title=f"Fine-tune: {backbone_id} on {dataset_label}",
        backbone=backbone_id,
        dataset_label=dataset_label,
        test_accuracy=_mean_std_percent(test),
        splits=splits,
        per_seed=per_seed,
        facts=facts,
        cards=[
            fact
            for fact in facts
            if fact[0] in ("strategy", "chosen learning rate", "validation accuracy (%)", "chance accuracy (%)", "time")
        ],
        config=[(str(k), json.dumps(v, default=str) if not isinstance(v, str) else v) for k, v in config.items()],
        lr_rows=_lr_rows(result.get("val_accuracy_by_lr"), result.get("chosen_lr")),
        per_class=per_class,
        heatmap=heatmap,
    )


# --- dispatch -------------------------------------------------------------------------------------------------------


def result_kind(result: Any) -> str:
    """``"benchmark"``, ``"ranking"`` or ``"finetune"`` (:func:`service.contract.result_kind`: the ``kind``, or the
    keys of a version-1 file); anything else -> :class:`InvalidResult`."""
    if isinstance(result, BaseModel):
        return str(getattr(result, "kind", ""))
    if not isinstance(result, Mapping):
        raise InvalidResult(f"a result must be a JSON object, got {type(result).__name__}")
    kind = contract_result_kind(dict(result))
    if kind is not None:
        return kind
    keys = ", ".join(sorted(map(str, result.keys()))[:12]) or "none"
    raise InvalidResult(
        'not a backbone-rank result: expected a benchmark result ("kind": "benchmark"), a ranking result '
        f"(`backbone-rank rank --json`) or a fine-tune result (`backbone-rank finetune --json`); got keys: {keys}"
    )


def typed_result(result: Mapping[str, Any] | AnyResult) -> AnyResult:
    """``result`` as its typed model (:func:`service.contract.load_result`, any schema version); a document that
    does not validate is an :class:`InvalidResult` naming the first problems."""
    if isinstance(result, RankingResult | FinetuneResult | BenchmarkResult):
        return result
    kind = result_kind(result)
    try:
        return load_result(dict(result))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'][1:])) or '(top level)'}: {e['msg']}" for e in err.errors()[:5]
        )
        raise InvalidResult(f"malformed {kind} result ({err.error_count()} problem(s)): {problems}") from None
    except ValueError as err:
        raise InvalidResult(str(err)) from None


def render_report(result: Mapping[str, Any] | AnyResult) -> str:
    """Render any result (its typed model, or a JSON document of any schema version) as one self-contained HTML
    page, dispatching on its kind.

    Raises
    ------
    InvalidResult
        (a ``ValueError``) when ``result`` is not a benchmark, ranking or fine-tune result, or is malformed.
    """
    typed = typed_result(result)
    renderers = {
        "benchmark": render_benchmark_report,
        "ranking": render_ranking_report,
        "finetune": render_finetune_report,
    }
    return renderers[typed.kind](typed.model_dump(mode="json"))
