"""How well a score predicts actual accuracy: rank correlations, regret and their bootstrap intervals.

The transferability literature evaluates a score per target by the weighted Kendall τ between the
scores and the fine-tuned accuracies of a pool of backbones (``scipy.stats.weightedtau`` with its
defaults: hyperbolic weigher, ``rank=True``, which averages the two lexicographic orderings, so the
value is symmetric in its arguments), then averages over targets. Next to it we report Kendall's τ-b,
Pearson's r and the top-1 regret (accuracy of the best backbone minus that of the score's pick), the
one number a user choosing a single backbone cares about.

Intervals are 95 % percentile bootstraps:

* per target, each replicate resamples the backbones with replacement (the pool is a sample of the
  backbones one could have asked about) and, for each drawn backbone, its fine-tuning seeds with
  replacement (ground-truth noise); the score is held fixed;
* across targets, the per-target values are resampled with replacement.

Lower-is-better scores are negated first, so every correlation reads "higher is better".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = [
    "METRICS",
    "aggregate_over_targets",
    "as_higher_is_better",
    "metric_values",
    "random_baseline_metrics",
    "target_metrics",
    "top1_regret",
]

#: Metric names, in report order.
METRICS = ("weighted_tau", "kendall_tau", "pearson", "top1_regret")


def top1_regret(scores: ArrayLike, accuracy: ArrayLike) -> float:
    """Accuracy of the best backbone minus the accuracy of the score's top pick (mean over tied picks).

    Shape
    -----
    scores, accuracy : (n_backbones,); higher score = predicted better.
    """
    s = np.asarray(scores, dtype=float)
    a = np.asarray(accuracy, dtype=float)
    picks = np.flatnonzero(s == s.max())
    return float(a.max() - a[picks].mean())


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _nearly_constant(values: NDArray[np.float64]) -> bool:
    """True when every value is equal up to float64 rounding (no ranking, no correlation)."""
    return bool(np.ptp(values) <= 1e-12 * max(float(np.abs(values).max()), 1e-300))


def metric_values(scores: ArrayLike, accuracy: ArrayLike) -> dict[str, float | None]:
    """All of :data:`METRICS` for one target; a correlation of constant input is ``None``.

    Shape
    -----
    scores, accuracy : (n_backbones,), n_backbones >= 2; higher score = predicted better.
    """
    s = np.asarray(scores, dtype=float)
    a = np.asarray(accuracy, dtype=float)
    if s.shape != a.shape or s.ndim != 1 or s.size < 2:
        raise ValueError(f"need two 1-D arrays of the same length >= 2; got {s.shape} and {a.shape}")
    if _nearly_constant(s) or _nearly_constant(a):
        wtau = ktau = pearson = float("nan")
    else:
        wtau = stats.weightedtau(s, a).statistic
        ktau = stats.kendalltau(s, a).statistic
        with warnings.catch_warnings():
            # Scores such as LogME differ in the 6th digit between backbones; the correlation is
            # still well defined there, scipy only cautions about the precision of the mean.
            warnings.simplefilter("ignore", stats.NearConstantInputWarning)
            pearson = stats.pearsonr(s, a).statistic
    return {
        "weighted_tau": _finite_or_none(wtau),
        "kendall_tau": _finite_or_none(ktau),
        "pearson": _finite_or_none(pearson),
        "top1_regret": top1_regret(s, a),
    }


def _interval(samples: Sequence[float | None], level: float = 0.95) -> tuple[float | None, float | None]:
    values = np.array([v for v in samples if v is not None], dtype=float)
    if values.size < max(10, len(samples) // 2):  # mostly undefined (e.g. constant resamples): no interval
        return None, None
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def target_metrics(
    scores: ArrayLike,
    accuracy_per_seed: Sequence[Sequence[float]],
    *,
    n_bootstrap: int = 500,
    seed: int = 0,
) -> dict[str, dict[str, float | None]]:
    """Metrics of one method on one target with bootstrap intervals.

    Parameters
    ----------
    scores : array-like of shape (n_backbones,)
        Higher = predicted better (negate lower-is-better scores first). No NaN.
    accuracy_per_seed : sequence of n_backbones sequences
        Each backbone's ground-truth accuracies, one per seed (lengths may differ; >= 1).
    n_bootstrap : int
        Replicates; 0 gives point values with null intervals.

    Returns
    -------
    ``{metric: {"value", "ci_low", "ci_high"}}`` for every metric in :data:`METRICS`.
    """
    s = np.asarray(scores, dtype=float)
    per_seed = [np.asarray(a, dtype=float) for a in accuracy_per_seed]
    if len(per_seed) != s.size or any(a.size == 0 for a in per_seed):
        raise ValueError("accuracy_per_seed needs one non-empty list of accuracies per score")
    mean = np.array([a.mean() for a in per_seed])
    point = metric_values(s, mean)
    replicates: dict[str, list[float | None]] = {name: [] for name in METRICS}
    rng = np.random.default_rng(seed)
    n = s.size
    for _ in range(n_bootstrap):
        pick = rng.integers(0, n, size=n)
        if np.unique(pick).size < 2:
            continue
        acc = np.array([per_seed[i][rng.integers(0, per_seed[i].size, size=per_seed[i].size)].mean() for i in pick])
        for name, value in metric_values(s[pick], acc).items():
            replicates[name].append(value)
    out: dict[str, dict[str, float | None]] = {}
    for name in METRICS:
        low, high = _interval(replicates[name]) if n_bootstrap else (None, None)
        out[name] = {"value": point[name], "ci_low": low, "ci_high": high}
    return out


def random_baseline_metrics(
    accuracy_per_seed: Sequence[Sequence[float]], *, n_draws: int = 1000, seed: int = 0
) -> dict[str, dict[str, float | None]]:
    """What a random ranking achieves: the mean over random score permutations, and the 95 % range.

    The value is the expectation (about 0 for the correlations), the interval the spread a random
    pick of scores reaches on this pool, which is the bar a real score has to clear.
    """
    mean = np.array([np.mean(a) for a in accuracy_per_seed], dtype=float)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float | None]] = {name: [] for name in METRICS}
    for _ in range(n_draws):
        for name, value in metric_values(rng.permutation(mean.size).astype(float), mean).items():
            draws[name].append(value)
    out: dict[str, dict[str, float | None]] = {}
    for name in METRICS:
        values = [v for v in draws[name] if v is not None]
        low, high = _interval(draws[name])
        out[name] = {"value": float(np.mean(values)) if values else None, "ci_low": low, "ci_high": high}
    return out


def aggregate_over_targets(
    per_target: Sequence[Mapping[str, Mapping[str, Any]]], *, n_bootstrap: int = 2000, seed: int = 0
) -> dict[str, dict[str, float | int | None]]:
    """Mean of each metric over targets with a bootstrap-over-targets interval.

    ``per_target`` holds one :func:`target_metrics` result per target. Targets where a metric is
    undefined are left out of that metric's mean (``n_targets`` says how many counted).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float | int | None]] = {}
    for name in METRICS:
        values = np.array(
            [m[name]["value"] for m in per_target if m.get(name) and m[name]["value"] is not None], dtype=float
        )
        if values.size == 0:
            out[name] = {"mean": None, "ci_low": None, "ci_high": None, "n_targets": 0}
            continue
        low: float | None = None
        high: float | None = None
        if values.size >= 2 and n_bootstrap:
            means = values[rng.integers(0, values.size, size=(n_bootstrap, values.size))].mean(axis=1)
            low, high = (float(v) for v in np.percentile(means, [2.5, 97.5]))
        out[name] = {"mean": float(values.mean()), "ci_low": low, "ci_high": high, "n_targets": int(values.size)}
    return out


def as_higher_is_better(values: ArrayLike, higher_is_better: bool) -> NDArray[np.float64]:
    """Scores oriented so that larger means predicted better."""
    arr = np.asarray(values, dtype=float)
    return arr if higher_is_better else -arr
