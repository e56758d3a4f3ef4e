"""H-score (Bao et al., ICIP 2019) and its shrinkage version (Ibrahim et al., ECML-PKDD 2022)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._base import TransferabilityEstimator
from ._linalg import pinv_eigh_rcond
from ._registry import register
from ._stats import Statistics, resolve_stats

__all__ = ["h_score", "shrinkage_h_score", "ledoit_wolf_shrinkage_from_stats", "HScore", "ShrinkageHScore"]


def _pinv_quadratic_trace(stats: Statistics, eigenvalues: NDArray[np.float64]) -> float:
    """Σ_c n_c d_cᵀ pinv(A) d_c for A = W diag(eigenvalues) Wᵀ in the centred Gram's eigenbasis W,
    d_c the centred class means; pinv with numpy.linalg.pinv's relative cutoff (rcond=1e-15)."""
    # Shared by h_score and shrinkage_h_score: the class-mean offsets in the eigenbasis, (D, C).
    projections = stats.memo(
        "class_means_in_gram_eigenbasis", lambda: stats.centered_gram_eigh[1].T @ stats.centered_class_means.T
    )
    return float(np.sum(stats.counts * (pinv_eigh_rcond(eigenvalues)[:, None] * projections**2).sum(axis=0)))


@register(
    "h_score",
    family="moment",
    reference="Bao et al., An Information-Theoretic Approach to Transferability, ICIP 2019 (TLlib)",
)
def h_score(
    features: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    *,
    stats: Statistics | None = None,
) -> float:
    """H-score: ``tr(pinv(Cov(f)) Cov(g))`` with ``g_i`` the class mean of sample i.

    Parameters
    ----------
    features : array-like of shape (N, D), optional
    labels : array-like of shape (N,), optional
    stats : Statistics, optional

    Returns
    -------
    float
        Higher is better. Invariant to any invertible linear map of the features (when the
        covariance is full rank); grows with D.

    Shape
    -----
    features (N, D), labels (N,).

    Notes
    -----
    Equal to TLlib's ``h_score``: covariances with ddof=1 (the factor cancels) and
    ``pinv(rcond=1e-15)``. We evaluate ``Σ_c n_c d_cᵀ pinv(Cov) d_c`` (d_c = μ_c - μ)
    in the eigenbasis of the shared centred Gram matrix, with pinv's cutoff on its eigenvalues.

    References
    ----------
    .. [1] Y. Bao et al. An Information-Theoretic Approach to Transferability in Task Transfer
       Learning. ICIP 2019.
    """
    stats = resolve_stats(features, labels, stats)
    return _pinv_quadratic_trace(stats, stats.centered_gram_eigh[0])


def ledoit_wolf_shrinkage_from_stats(stats: Statistics) -> float:
    """Ledoit-Wolf shrinkage of the centred features, from the Gram matrix and row norms.

    Same formula as ``sklearn.covariance.ledoit_wolf_shrinkage`` (which a test checks), but
    reusing the shared centred Gram matrix instead of recomputing XᵀX block by block:
    ``Σ_jk (X²ᵀX²)_jk = Σ_i ‖x_i‖⁴`` (``Statistics.centered_fourth_moment``, also streamed) and
    ``Σ_jk (XᵀX)_jk² = ‖Gram‖_F²``.
    """
    n, p = stats.n_samples, stats.n_features
    if p == 1:
        return 0.0
    gram = stats.centered_gram
    sum_fourth = stats.centered_fourth_moment
    delta_ = float(np.sum(gram**2)) / n**2
    trace_sum = float(np.trace(gram)) / n
    mu = trace_sum / p
    beta = (sum_fourth / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * trace_sum + p * mu**2) / p
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


@register(
    "shrinkage_h_score",
    family="moment",
    reference="Ibrahim, Ponomareva & Mazumder, Newer is not always better: rethinking transferability "
    "metrics, ECML-PKDD 2022 (TLlib regularized_h_score)",
)
def shrinkage_h_score(
    features: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    *,
    stats: Statistics | None = None,
) -> float:
    """Shrinkage H-score: H-score with a Ledoit-Wolf shrunk feature covariance.

    ``H_α = tr(pinv(Σ_α) (1 - α) Cov(g))`` with ``Σ_α = (1 - α) S + α (tr S / D) I``, S the
    biased covariance of the centred features and α the Ledoit-Wolf shrinkage.

    Parameters
    ----------
    features : array-like of shape (N, D), optional
    labels : array-like of shape (N,), optional
    stats : Statistics, optional

    Returns
    -------
    float
        Higher is better. Invariant to a global scale of the features (α and the ratio are).

    Shape
    -----
    features (N, D), labels (N,).

    Notes
    -----
    Matches TLlib's ``regularized_h_score``, including its mix of normalisations: Σ_α from
    sklearn's ``LedoitWolf`` (1/N) and Cov(g) from ``np.cov`` (1/(N-1)).

    References
    ----------
    .. [1] S. Ibrahim, N. Ponomareva, R. Mazumder. Newer is not always better: Rethinking
       transferability metrics, their peculiarities, stability and performance. ECML-PKDD 2022.
    """
    stats = resolve_stats(features, labels, stats)
    n, d = stats.n_samples, stats.n_features
    alpha = ledoit_wolf_shrinkage_from_stats(stats)
    values = stats.centered_gram_eigh[0]
    mu = float(np.trace(stats.centered_gram)) / (n * d)
    shrunk = (1.0 - alpha) / n * values + alpha * mu  # eigenvalues of Σ_α, same eigenvectors
    return (1.0 - alpha) / (n - 1) * _pinv_quadratic_trace(stats, shrunk)


class HScore(TransferabilityEstimator):
    """Estimator wrapper of :func:`h_score`."""

    _estimator_name = "h_score"

    def __init__(self) -> None:
        pass


class ShrinkageHScore(TransferabilityEstimator):
    """Estimator wrapper of :func:`shrinkage_h_score`."""

    _estimator_name = "shrinkage_h_score"

    def __init__(self) -> None:
        pass
