"""Two checks of a benchmark result beyond rank correlation: is ``p_best`` honest, and does the ground truth agree
with itself?

* **p(best)**: where the benchmark ran the default order's ``p_best`` resampling (``--p-best N``), how often the
  backbone given p_best >= 0.5 is the best by fine-tuned accuracy, how many targets had no such backbone, and the
  mean p_best of the actual best (a calibrated p_best has it near the hit rate of the most probable backbone).
* **Ground truths that disagree**: a pick can be good under the linear probe and bad after fine-tuning (a
  random-init control probes well on simple features and trains badly from scratch, or the other way round).
  Per target the default's top pick and the best backbone by either ground truth are checked; one is flagged
  when its accuracy gap to the best differs by more than :data:`GAP_SHIFT` between the two ground truths, or
  when its rank differs by at least :data:`RANK_SHIFT` of the backbones while one of its gaps exceeds
  :data:`MIN_GAP` (so that near-ties which only reshuffle are not flagged).

Both read only what a result records (numbers, no features), so :func:`service.pipeline.benchmark.results.summarize`
runs them on any result; apart from it because neither is a rank correlation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from service.contract.results import benchmark_score

__all__ = ["GAP_SHIFT", "MIN_GAP", "RANK_SHIFT", "ground_truth_flags", "p_best_check"]

#: A pick is confident when its p_best reaches this.
CONFIDENT = 0.5
#: Flag a backbone whose gap to the best (accuracy) differs by more than this between the two ground truths.
GAP_SHIFT = 0.10
#: ... or whose rank differs by at least this share of the backbones,
RANK_SHIFT = 0.5
#: ... provided one of its two gaps to the best is above this (accuracy).
MIN_GAP = 0.05
#: Accuracies this close are one value (the best may be a tie).
_TIE = 1e-12


def _finetuned(row: Mapping[str, Any]) -> float | None:
    accuracy = row.get("accuracy") or {}
    value = accuracy.get("mean") if isinstance(accuracy, Mapping) else None
    return None if value is None or not np.isfinite(value) else float(value)


def p_best_check(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """The p(best) check over the targets whose rows carry ``p_best``; None when no target does.

    The most probable backbone of a target is the one with the highest p_best (ties: the higher default score,
    then the first row); it is confident when its p_best >= 0.5. The best are the backbones with the highest
    fine-tuned accuracy (ties: all of them).
    """
    per_target: list[dict[str, Any]] = []
    n_bootstrap = 0
    seconds = 0.0
    for target in result["targets"]:
        rows = [r for r in target["backbones"] if r.get("p_best") is not None and _finetuned(r) is not None]
        if len(rows) < 2:
            continue
        info = target.get("p_best") or {}
        n_bootstrap = max(n_bootstrap, int(info.get("n_bootstrap") or 0))
        seconds += float(info.get("seconds") or 0.0)
        accuracy = np.array([_finetuned(r) for r in rows], dtype=float)
        best = [str(r["id"]) for r, a in zip(rows, accuracy, strict=True) if a >= accuracy.max() - _TIE]
        top = max(
            range(len(rows)),
            key=lambda i: (rows[i]["p_best"], benchmark_score(rows[i], "default") or -np.inf, -i),
        )
        per_target.append(
            {
                "target": str(target["name"]),
                "top": str(rows[top]["id"]),
                "top_p_best": float(rows[top]["p_best"]),
                "best": best,
                "p_best_of_best": float(sum(r["p_best"] for r in rows if str(r["id"]) in best)),
                "top_is_best": str(rows[top]["id"]) in best,
            }
        )
    if not per_target:
        return None
    confident = [t for t in per_target if t["top_p_best"] >= CONFIDENT]
    return {
        "n_bootstrap": n_bootstrap,
        "n_targets": len(per_target),
        "n_confident": len(confident),
        "n_confident_best": sum(t["top_is_best"] for t in confident),
        "n_unconfident": len(per_target) - len(confident),
        "n_top_best": sum(t["top_is_best"] for t in per_target),
        "mean_top_p_best": float(np.mean([t["top_p_best"] for t in per_target])),
        "mean_p_best_of_best": float(np.mean([t["p_best_of_best"] for t in per_target])),
        "seconds": seconds,
        "per_target": per_target,
    }


def _place(rank: float, n: int) -> str:
    if rank == 1:
        return "best"
    if rank == n:
        return "worst"
    return f"rank {rank:g} of {n}"


def _value(accuracies: np.ndarray, i: int) -> str:
    """An accuracy in words, with the best's where it is neither the best nor the worst (its place says little)."""
    value, best, worst = accuracies[i], accuracies.max(), accuracies.min()
    return f"{value:.2f}" if value >= best - _TIE or value <= worst + _TIE else f"{value:.2f}; best {best:.2f}"


def _strategy(rows: Sequence[Mapping[str, Any]]) -> str | None:
    found = [str(s) for r in rows if isinstance(r.get("finetune"), Mapping) and (s := r["finetune"].get("strategy"))]
    return max(set(found), key=found.count) if found else None


def ground_truth_flags(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Backbones good under one ground truth and bad under the other (see the module docstring for the rule).

    Targets where fewer than 2 backbones have both a fine-tuned and a linear-probe accuracy are not checked.
    """
    flags: list[dict[str, Any]] = []
    for target in result["targets"]:
        rows = [
            r
            for r in target["backbones"]
            if _finetuned(r) is not None and isinstance(r.get("linear_probe_accuracy"), int | float)
        ]
        n = len(rows)
        if n < 2:
            continue
        tuned = np.array([_finetuned(r) for r in rows], dtype=float)
        probed = np.array([float(r["linear_probe_accuracy"]) for r in rows])
        tuned_rank, probed_rank = rankdata(-tuned, method="average"), rankdata(-probed, method="average")
        roles: dict[int, list[str]] = {}
        defaults = [benchmark_score(r, "default") for r in rows]
        if any(d is not None for d in defaults):
            top = max(d for d in defaults if d is not None)
            for i, d in enumerate(defaults):
                if d is not None and d >= top - _TIE * max(1.0, abs(top)):
                    roles.setdefault(i, []).append("the default's pick")
        for best in np.flatnonzero(tuned >= tuned.max() - _TIE).tolist():
            roles.setdefault(best, []).append("best by fine-tuning")
        for best in np.flatnonzero(probed >= probed.max() - _TIE).tolist():
            roles.setdefault(best, []).append("best by linear probe")
        strategy = _strategy(rows)
        for i, why in sorted(roles.items()):
            tuned_gap, probed_gap = float(tuned.max() - tuned[i]), float(probed.max() - probed[i])
            shift = abs(float(tuned_rank[i] - probed_rank[i]))
            if not (
                abs(tuned_gap - probed_gap) > GAP_SHIFT
                or (shift >= RANK_SHIFT * n and max(tuned_gap, probed_gap) > MIN_GAP)
            ):
                continue
            after = f"after {strategy} fine-tuning" if strategy else "after fine-tuning"
            probe_text = f"{_place(float(probed_rank[i]), n)} by linear probe ({_value(probed, i)})"
            tune_text = f"{_place(float(tuned_rank[i]), n)} {after} ({_value(tuned, i)})"
            first, second = (probe_text, tune_text) if probed_rank[i] <= tuned_rank[i] else (tune_text, probe_text)
            flags.append(
                {
                    "target": str(target["name"]),
                    "backbone": str(rows[i]["id"]),
                    "roles": why,
                    "n_backbones": n,
                    "linear_probe": float(probed[i]),
                    "finetune": float(tuned[i]),
                    "linear_probe_rank": float(probed_rank[i]),
                    "finetune_rank": float(tuned_rank[i]),
                    "linear_probe_gap": probed_gap,
                    "finetune_gap": tuned_gap,
                    "strategy": strategy,
                    "message": f"{rows[i]['id']} on {target['name']} ({', '.join(why)}): {first} but {second}: "
                    "which backbone is best depends on how you transfer",
                }
            )
    return flags
