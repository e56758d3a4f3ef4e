"""k-nearest-neighbour leave-one-out accuracy (the kNN baseline of Bolya et al., NeurIPS 2021)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._base import TransferabilityEstimator
from ._registry import register
from ._stats import Statistics, resolve_stats

__all__ = ["knn", "KNN"]

_ROWS_PER_BLOCK = 1024


@register(
    "knn",
    family="sample",
    reference="Bolya, Mittapalli & Hoffman, Scalable Diverse Model Selection for Accessible Transfer "
    "Learning, NeurIPS 2021 (dbolya/parc kNN); Sorkhei et al., arXiv 2503.18528",
)
def knn(
    features: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    *,
    k: int = 1,
    stats: Statistics | None = None,
) -> float:
    """Leave-one-out k-NN accuracy (Euclidean distance), as a fraction in [0, 1].

    Parameters
    ----------
    features : array-like of shape (N, D), optional
    labels : array-like of shape (N,), optional
    k : int, default=1
        Neighbours voting; ties in the vote go to the class of the nearest tied neighbour.
    stats : Statistics, optional

    Returns
    -------
    float
        Fraction of samples whose k nearest other samples vote for their class; higher is better.

    Shape
    -----
    features (N, D), labels (N,); O(N² D) time, O(N · 1024) extra memory.

    Notes
    -----
    The reference code (dbolya/parc) reports a percentage and drops the first column of an
    argsort assuming it is the sample itself, which fails for duplicated samples; we exclude
    the sample explicitly and report a fraction. Distances use ``‖a‖² + ‖b‖² - 2 aᵀb`` on
    mean-centred features; among neighbours at the same *computed* distance the lowest index
    wins (rounding can separate mathematically equal distances, e.g. on integer features, where
    the reference's unstable argsort orders them arbitrarily anyway). For k = 1, the default,
    the values equal the reference's (x 100) on continuous features. For k > 1 the reference's
    vote broadcasts ``np.where(counts == 1, votes, mode)`` over the k neighbours, so a sample
    whose k votes all differ scores (correct neighbours) / k; we take one vote per sample, as
    k-NN is defined, with ties going to the nearest tied neighbour.

    References
    ----------
    .. [1] D. Bolya, R. Mittapalli, J. Hoffman. Scalable Diverse Model Selection for Accessible
       Transfer Learning. NeurIPS 2021.
    """
    stats = resolve_stats(features, labels, stats)
    labels_ = stats._require_labels()
    n = stats.n_samples
    if not 1 <= k < n:
        raise ValueError(f"k must be between 1 and n_samples - 1 = {n - 1}; got {k}")
    centred = stats._require_features() - stats.mean
    sq = stats.centered_sq_norms
    correct = 0
    for start in range(0, n, _ROWS_PER_BLOCK):
        rows = np.arange(start, min(start + _ROWS_PER_BLOCK, n))
        distances = sq[rows, None] + sq[None, :] - 2.0 * (centred[rows] @ centred.T)
        distances[np.arange(rows.size), rows] = np.inf
        predicted = _vote(distances, labels_, k)
        correct += int(np.sum(predicted == labels_[rows]))
    return correct / n


def _vote(distances: NDArray[np.float64], labels: NDArray[np.intp], k: int) -> NDArray[np.intp]:
    if k == 1:
        nearest_label: NDArray[np.intp] = labels[np.argmin(distances, axis=1)]
        return nearest_label
    nearest = np.argpartition(distances, k - 1, axis=1)[:, :k]
    predicted = np.empty(distances.shape[0], dtype=np.intp)
    for i, candidates in enumerate(nearest):
        order = candidates[np.lexsort((candidates, distances[i, candidates]))]
        votes = labels[order]
        counts = np.bincount(votes)
        tied = np.flatnonzero(counts == counts.max())
        predicted[i] = votes[np.isin(votes, tied)][0]
    return predicted


class KNN(TransferabilityEstimator):
    """Estimator wrapper of :func:`knn`."""

    _estimator_name = "knn"

    def __init__(self, *, k: int = 1) -> None:
        self.k = k
