"""Markdown tables of a benchmark result, as recorded in benchmarks/README.md.

    .venv/bin/python benchmarks/benchmark_tables.py benchmarks/results/benchmark-default-<fingerprint>.json

Prints: the ground truth per (target, backbone); per method (estimators and baselines) the mean
weighted Kendall τ over targets with its bootstrap-over-targets 95 % interval, Kendall τ, Pearson r
and top-1 regret; τw per target; τw against the linear-probe accuracy; and the cost of ranking next
to fine-tuning. Everything is read from the result file (``summary``, ``metrics``, ``cost``), except
the linear-probe τw, computed here with the same :func:`metric_values`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

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

    order = sorted(summary, key=mean_tau, reverse=True)
    lines = [
        "| method | τw mean [95 % CI] | Kendall τ | Pearson r | top-1 regret | targets |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in order:
        entry = summary[name]
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
    methods = [(e["name"], e["higher_is_better"]) for e in result["estimators"]]
    methods += [(b["name"], b["higher_is_better"]) for b in result["baselines"] if b["name"] != "random"]
    lines = [
        "| method | mean | " + " | ".join(t["name"] for t in targets) + " |",
        "|---|---:|" + "---:|" * len(targets),
    ]
    for name, higher in methods:
        values: list[float | None] = []
        for target in targets:
            rows = [
                r
                for r in target["backbones"]
                if r["scores"].get(name) is not None and r.get("linear_probe_accuracy") is not None
            ]
            if len(rows) < 2:
                values.append(None)
                continue
            scores = as_higher_is_better([r["scores"][name] for r in rows], higher)
            values.append(metric_values(scores, [r["linear_probe_accuracy"] for r in rows])["weighted_tau"])
        present = [v for v in values if v is not None]
        mean = float(np.mean(present)) if present else None
        lines.append(f"| {name} | {_num(mean)} | " + " | ".join(_num(v) for v in values) + " |")
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
        ("Cost", cost_lines(result)),
    ]
    for title, lines in sections:
        print(f"#### {title}\n")
        print("\n".join(lines))
        print()


if __name__ == "__main__":
    main()
