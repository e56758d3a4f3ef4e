"""Markdown tables of a benchmark result, as recorded in benchmarks/README.md.

    .venv/bin/python benchmarks/benchmark_tables.py benchmarks/results/benchmark-default-<fingerprint>.json

Prints: the ground truth per (target, backbone); per method (the product's orders, ``default`` being what
``rank`` returns, then estimators and baselines) the mean weighted Kendall τ over targets with its
bootstrap-over-targets 95 % interval, Kendall τ, Pearson r and top-1 regret; τw per target; τw against the
linear-probe accuracy; the p(best) check and the backbones the two ground truths disagree on; and the cost of
ranking next to fine-tuning. Everything is read from the result file (``summary``, ``metrics``, ``p_best_check``,
``ground_truth_flags``, ``cost``), except the linear-probe τw, computed here with the same :func:`metric_values`.
A result recorded before the product's orders existed gets them with ``backbone-rank resummarize RESULT.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.contract.results import benchmark_score
from service.pipeline.benchmark.metrics import as_higher_is_better, metric_values


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(entry: dict[str, Any], key: str = "mean") -> str:
    if entry.get(key) is None:
        return "–"
    if entry.get("ci_low") is None:
        return _num(entry[key])
    return f"{entry[key]:.2f} [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}]"


def ground_truth_table(result: dict[str, Any]) -> list[str]:
    targets = result["targets"]
    ids = [row["id"] for row in targets[0]["backbones"]]
    lines = [
        "| backbone | " + " | ".join(t["name"] for t in targets) + " |",
        "|---|" + "---:|" * len(targets),
    ]
    for backbone in ids:
        cells = []
        for target in targets:
            row = next((r for r in target["backbones"] if r["id"] == backbone), None)
            if row is None:
                cells.append("–")
                continue
            acc = row["accuracy"]
            probe = row.get("linear_probe_accuracy")
            spread = f" ± {acc['std']:.3f}" if acc.get("std") is not None else ""
            cells.append(f"{acc['mean']:.3f}{spread}" + (f" ({probe:.3f})" if probe is not None else ""))
        lines.append(f"| `{backbone}` | " + " | ".join(cells) + " |")
    return lines


def summary_table(result: dict[str, Any]) -> list[str]:
    summary = result["summary"]
    def mean_tau(name: str) -> float:
        value = summary[name]["weighted_tau"]["mean"]
        return -2.0 if value is None else value

    order = sorted(summary, key=lambda name: (not summary[name].get("is_product"), -mean_tau(name)))
    lines = [
        "| method | τw mean [95 % CI] | Kendall τ | Pearson r | top-1 regret | targets |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in order:
        entry = summary[name]
        if entry.get("is_product"):
            label = f"**`{name}`** (" + ("default order" if name == "default" else "product") + ")"
        else:
            label = f"*{name}* (baseline)" if entry["is_baseline"] else f"`{name}`"
        lines.append(
            f"| {label} | {_interval(entry['weighted_tau'])} | {_num(entry['kendall_tau']['mean'])} | "
            f"{_num(entry['pearson']['mean'])} | {_num(entry['top1_regret']['mean'], 3)} | "
            f"{entry['weighted_tau']['n_targets']} |"
        )
    return lines


def per_target_table(result: dict[str, Any]) -> list[str]:
    targets = result["targets"]
    names = list(result["summary"])
    lines = ["| method | " + " | ".join(t["name"] for t in targets) + " |", "|---|" + "---:|" * len(targets)]
    for name in names:
        cells = []
        for target in targets:
            metric = (target["metrics"].get(name) or {}).get("weighted_tau")
            cells.append(_num(metric["value"]) if metric else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def linear_probe_table(result: dict[str, Any]) -> list[str]:
    """τw of every estimator against the linear-probe accuracy (a second ground truth), per target and mean."""
    targets = result["targets"]
    methods = [(c["name"], c["higher_is_better"]) for c in (result.get("default_order") or {}).get("methods") or []]
    methods += [(e["name"], e["higher_is_better"]) for e in result["estimators"]]
    methods += [(b["name"], b["higher_is_better"]) for b in result["baselines"] if b["name"] != "random"]
    lines = [
        "| method | mean | " + " | ".join(t["name"] for t in targets) + " |",
        "|---|---:|" + "---:|" * len(targets),
    ]
    for name, higher in methods:
        values: list[float | None] = []
        for target in targets:
            pairs = [
                (score, r["linear_probe_accuracy"])
                for r in target["backbones"]
                if (score := benchmark_score(r, name)) is not None and r.get("linear_probe_accuracy") is not None
            ]
            if len(pairs) < 2:
                values.append(None)
                continue
            scores = as_higher_is_better([score for score, _ in pairs], higher)
            values.append(metric_values(scores, [probe for _, probe in pairs])["weighted_tau"])
        present = [v for v in values if v is not None]
        mean = float(np.mean(present)) if present else None
        lines.append(f"| {name} | {_num(mean)} | " + " | ".join(_num(v) for v in values) + " |")
    return lines


def check_lines(result: dict[str, Any]) -> list[str]:
    """The p(best) check and the ground-truth disagreements, in words (what was not checked says so)."""
    lines = []
    order = result.get("default_order")
    if order is None:
        lines.append("- the default order was not scored (`backbone-rank resummarize RESULT.json` adds it)")
    else:
        calibration = order.get("calibration")
        lines.append(
            "- default order: "
            + (f"calibration `{calibration['path']}` ({calibration['created']})" if calibration else "no calibration")
        )
    check = result.get("p_best_check")
    if check:
        lines.append(
            f"- p(best), {check['n_bootstrap']} half-samples per target: a backbone got p ≥ 0.5 on "
            f"{check['n_confident']} of {check['n_targets']} targets and was the best on {check['n_confident_best']}; "
            f"none reached 0.5 on {check['n_unconfident']}; the most probable backbone was the best on "
            f"{check['n_top_best']} (mean p {_num(check['mean_top_p_best'])}); mean p_best of the actual best "
            f"{_num(check['mean_p_best_of_best'])}"
        )
    else:
        lines.append("- p(best): not run (`backbone-rank benchmark --p-best N`)")
    flags = result.get("ground_truth_flags")
    if flags is None:
        lines.append("- ground truths: not checked")
    elif not flags:
        lines.append("- ground truths: the linear probe and fine-tuning agree on every checked pick (none flagged)")
    lines += [f"- **ground truths disagree**: {flag['message']}" for flag in flags or []]
    return lines


def cost_lines(result: dict[str, Any]) -> list[str]:
    cost = result["cost"]
    lines = [
        f"- ranking (feature extraction + every default estimator): {cost['ranking_seconds']:.0f} s, of which "
        f"extraction {cost['extract_seconds']:.0f} s",
        f"- fine-tuning ground truth: {_num(cost['finetune_seconds'], 0)} s",
        f"- fine-tuning / ranking: {_num(cost['ratio'], 1)}x",
    ]
    per = cost.get("ratio_per_estimator") or {}
    if per:
        ranked = sorted(per.items(), key=lambda kv: -kv[1])
        lines.append(
            "- fine-tuning / (extraction + one estimator): "
            + ", ".join(f"{name} {ratio:.0f}x" for name, ratio in ranked)
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    args = parser.parse_args()
    result = json.loads(args.result.read_text())
    sections = [
        ("Ground truth: fine-tuned test accuracy, mean ± std over seeds (linear probe)", ground_truth_table(result)),
        ("Methods over all targets (weighted Kendall τ against fine-tuned accuracy)", summary_table(result)),
        ("τw per target", per_target_table(result)),
        ("τw against the linear-probe accuracy", linear_probe_table(result)),
        ("Checks", check_lines(result)),
        ("Cost", cost_lines(result)),
    ]
    for title, lines in sections:
        print(f"#### {title}\n")
        print("\n".join(lines))
        print()


if __name__ == "__main__":
    main()
