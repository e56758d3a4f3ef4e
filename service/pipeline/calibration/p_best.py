"""How sure a ranking's winner is (``p_best``), and the source-accuracy prior a fused order may use.

Both are computed per request on top of a fitted calibration (:mod:`service.pipeline.calibration.model`)
rather than stored in it: ``p_best`` resamples the target's own images, and the prior is looked up per backbone.
They are apart from the model module because they call back into the ranking (``score_fn``) and into what the
host knows about backbones (:mod:`service.pipeline.plugins`, the benchmark suites).

Probability of being best: the fused members are recomputed on ``n_bootstrap`` class-stratified
half-samples of the target images (the same images for every backbone), and ``p_best`` is the share of
replicates a backbone tops (ties split). Half-samples without replacement rather than the n-out-of-n
bootstrap, because a duplicated image would be its own nearest neighbour and its own class member in the
leave-one-out scores (kNN, class means); half-sampling matches the bootstrap's variance to first order.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import NDArray

from service.pipeline.calibration.model import Fusion, fused_scores
from service.pipeline.plugins import source_info

__all__ = ["p_best", "source_accuracy_of"]


def _half_sample(labels: NDArray[np.int64], rng: np.random.Generator) -> NDArray[np.intp]:
    """Class-stratified half-sample without replacement (at least 2 per class, so leave-one-out scores work)."""
    picked = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        take = min(rows.size, max(2, int(math.ceil(rows.size / 2))))
        picked.append(rng.choice(rows, size=take, replace=False))
    return np.sort(np.concatenate(picked))


def p_best(
    score_fn: Callable[[NDArray[np.intp]], list[Mapping[str, float | None]]],
    labels: NDArray[np.int64],
    fusion: Fusion,
    *,
    n_bootstrap: int = 50,
    seed: int = 0,
    on_replicate: Callable[[int], None] | None = None,
) -> NDArray[np.float64]:
    """Share of half-sample replicates in which each backbone has the highest fused score.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(rows) -> [{member: score}, ...]``: every backbone's member scores recomputed on the
        image subset ``rows`` (the same rows for every backbone).
    labels : ndarray of shape (N,)
        Class of each image (the strata).
    n_bootstrap : int
        Replicates (> 0). Deterministic given ``seed``.
    on_replicate : callable, optional
        Called with the number of replicates done after each one (progress; may raise to stop).

    Returns
    -------
    ndarray of shape (n_backbones,)
        Sums to 1; tied leaders share a replicate equally.
    """
    if n_bootstrap <= 0:
        raise ValueError("n_bootstrap must be positive")
    rng = np.random.default_rng(seed)
    counts: NDArray[np.float64] | None = None
    for replicate in range(1, n_bootstrap + 1):
        rows = _half_sample(np.asarray(labels), rng)
        fused = fused_scores(score_fn(rows), fusion)
        if counts is None:
            counts = np.zeros(fused.size)
        if not np.isfinite(fused).any():
            counts += 1.0 / fused.size  # nothing scored: no backbone is preferred
        else:
            top = np.flatnonzero(fused == np.nanmax(fused))
            counts[top] += 1.0 / top.size
        if on_replicate is not None:
            on_replicate(replicate)
    assert counts is not None
    return counts / n_bootstrap


def _suite_source_accuracies() -> dict[str, float]:
    """Source accuracies the known suites record (published ImageNet top-1 of the real backbones)."""
    from service.pipeline.benchmark.suites import suite_names

    # Keyed by the registered suites: one looked up before the host registered its suites must not stay empty.
    return _source_accuracies_of_suites(tuple(suite_names()))


@functools.cache
def _source_accuracies_of_suites(names: tuple[str, ...]) -> dict[str, float]:
    from service.pipeline.benchmark.suites import get_suite

    known: dict[str, float] = {}
    for name in names:
        for backbone in get_suite(name).backbones:
            if backbone.source_accuracy is not None and not backbone.id.startswith(("zoo:", "unavailable:")):
                known[backbone.id] = float(backbone.source_accuracy)
    return known


def source_accuracy_of(backbone_id: str) -> float | None:
    """The backbone's accuracy on its own source task when known offline, else None: what the host knows (the
    built-in zoo's card, :func:`service.pipeline.plugins.source_info`), else the published ImageNet top-1 the
    known benchmark suites record (the same numbers the benchmark's ``source_accuracy`` baseline, and so the
    calibration, used)."""
    _, value = source_info(backbone_id)
    if value is not None:
        return value if math.isfinite(value) else None
    return _suite_source_accuracies().get(backbone_id)
