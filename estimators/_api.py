"""The one-call entry point: ``score(name, features, labels, ...)``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ._registry import get_estimator
from ._stats import Statistics

__all__ = ["score"]


def score(
    name: str,
    features: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    *,
    stats: Statistics | None = None,
    source_probs: ArrayLike | None = None,
    **params: Any,
) -> float:
    """Compute the transferability score ``name`` of one backbone's features.

    Parameters
    ----------
    name : str
        A registry name (see :func:`list_estimators`), e.g. ``"logme"``.
    features : array-like of shape (N, D), optional
        Pooled target features of one backbone; computed in float64.
    labels : array-like of shape (N,), optional
        Target class labels (ints or strings).
    stats : Statistics, optional
        Shared precomputed statistics; pass instead of features/labels/source_probs to reuse
        Gram matrices and eigendecompositions across estimators.
    source_probs : array-like of shape (N, C_s), optional
        Source-head softmax outputs, required by ``leep`` and ``nce``.
    **params
        The estimator's own parameters (see ``EstimatorInfo.params``).

    Returns
    -------
    float
        The score; ``EstimatorInfo.higher_is_better`` gives its direction.
    """
    info = get_estimator(name)
    unknown = sorted(set(params) - set(info.params))
    if unknown:
        accepted = ", ".join(info.params) or "none"
        raise ValueError(f"unknown parameter(s) {unknown} for estimator {name!r}; accepted: {accepted}")
    if "source_probs" in info.needs:
        available = source_probs if stats is None else stats.source_probs
        if available is None:
            raise ValueError(
                f"estimator {name!r} needs source_probs: the source classifier's softmax outputs of shape "
                "(N, C_s); pass source_probs=..., or use a feature-only estimator for headless backbones"
            )
        params["source_probs"] = source_probs
    elif stats is None and source_probs is not None:
        source_probs = None  # feature-only estimators ignore the source head
    return float(info.func(features, labels, stats=stats, **params))
