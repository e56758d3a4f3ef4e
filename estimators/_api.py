"""The one-call entry point: ``score(name, features, labels, ...)``."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from ._registry import get_estimator
from ._stats import SamplesRequiredError, Statistics

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
        Gram matrices and eigendecompositions across estimators. Streamed statistics
        (:class:`StreamingStatistics`) serve the moment-based estimators; the others raise
        :class:`SamplesRequiredError` (a ValueError) naming the estimator.
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
        if stats is None:
            available = source_probs is not None
        else:  # a non-Statistics ``stats`` is refused by the estimator itself, with a clear message
            available = not isinstance(stats, Statistics) or stats.has_source_probs
        if not available:
            raise ValueError(
                f"estimator {name!r} needs source_probs: the source classifier's softmax outputs of shape "
                "(N, C_s); pass source_probs=..., or use a feature-only estimator for headless backbones"
            )
        params["source_probs"] = source_probs
    elif stats is None and source_probs is not None:
        source_probs = None  # feature-only estimators ignore the source head
    try:
        return float(info.func(features, labels, stats=stats, **params))
    except SamplesRequiredError as err:
        raise SamplesRequiredError(f"estimator {name!r} cannot run on streamed statistics: {err}") from None
