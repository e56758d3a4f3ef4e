"""LEEP: Log Expected Empirical Prediction (Nguyen, Hassner, Seeger & Archambeau, ICML 2020)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._base import TransferabilityEstimator
from ._registry import register
from ._stats import Statistics, resolve_stats

__all__ = ["leep", "LEEP"]


@register(
    "leep",
    family="source-head",
    needs=("source_probs",),
    reference="Nguyen et al., LEEP, ICML 2020 (thuml/LogME LEEP.py, TLlib)",
)
def leep(
    features: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    *,
    source_probs: ArrayLike | None = None,
    stats: Statistics | None = None,
) -> float:
    """LEEP: mean log-likelihood of the target labels under the source head's "empirical predictor".

    With θ_i the source softmax of sample i, the empirical joint is
    ``P(y, z) = (1/N) Σ_i θ_i(z) 1[y_i = y]``, ``P(y | z) = P(y, z) / P(z)`` and
    ``LEEP = (1/N) Σ_i log Σ_z P(y_i | z) θ_i(z)``.

    Parameters
    ----------
    features : ignored
        Accepted for a uniform signature; LEEP reads only labels and source probabilities.
    labels : array-like of shape (N,)
        Target class labels.
    source_probs : array-like of shape (N, C_s)
        Softmax outputs of the source classifier on the target samples.
    stats : Statistics, optional
        Shared statistics built with ``source_probs``.

    Returns
    -------
    float
        A log-likelihood (<= 0); higher is better.

    Shape
    -----
    labels (N,), source_probs (N, C_s) with rows summing to 1.

    Notes
    -----
    This is the paper's definition with the log, as in thuml/LogME and TLlib (the SFDA and ETran
    copies drop the log; PACTran's returns a KL form). Source classes with exactly zero total
    probability are dropped: they contribute nothing to the sum, and the official code would
    divide 0 by 0 there and return NaN.

    References
    ----------
    .. [1] C. Nguyen, T. Hassner, M. Seeger, C. Archambeau. LEEP: A New Measure to Evaluate
       Transferability of Learned Representations. ICML 2020.
    """
    stats = resolve_stats(None, labels, stats, source_probs=source_probs)
    theta = stats.source_probs
    if theta is None:
        raise ValueError("leep needs source_probs: the source classifier's softmax outputs (N, C_s)")
    labels_ = stats._require_labels()
    joint = np.asarray(stats.indicator @ theta) / stats.n_samples  # (C, C_s)
    marginal = joint.sum(axis=0)
    used = marginal > 0
    conditional = joint[:, used] / marginal[used]  # P(y | z)
    expected = np.einsum("ij,ij->i", theta[:, used], conditional[labels_])
    return float(np.mean(np.log(expected)))


class LEEP(TransferabilityEstimator):
    """Estimator wrapper of :func:`leep`; ``fit(features, labels, source_probs=...)``."""

    _estimator_name = "leep"

    def __init__(self) -> None:
        pass
