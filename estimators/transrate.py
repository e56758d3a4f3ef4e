"""TransRate: transferability as a coding-rate gap (Huang, Huang, Zhang, Ghahramani & Wei, ICML 2022)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._backend import Backend
from ._base import TransferabilityEstimator
from ._registry import register
from ._stats import Statistics, resolve_stats

__all__ = ["transrate", "TransRate"]


def _coding_rate(gram_like: NDArray[np.float64], n_rows: int, eps: float, backend: Backend) -> float:
    """½ log det(I + M / (n ε)) for M = ZᵀZ or Z Zᵀ (equal non-zero spectra)."""
    matrix = gram_like / (n_rows * eps)
    matrix.flat[:: matrix.shape[0] + 1] += 1.0
    return 0.5 * backend.logdet_spd(matrix)


@register(
    "transrate",
    family="moment",
    reference="Huang et al., Frustratingly Easy Transferability Estimation, ICML 2022 (TLlib transrate)",
)
def transrate(
    features: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    *,
    eps: float = 1e-4,
    stats: Statistics | None = None,
) -> float:
    """TransRate: ``R(Z) - (1/C) Σ_c R(Z_c)`` with the coding rate ``R(Z) = ½ log det(I + ZᵀZ / (n ε))``.

    Parameters
    ----------
    features : array-like of shape (N, D), optional
    labels : array-like of shape (N,), optional
    eps : float, default=1e-4
        Distortion ε (TLlib's default).
    stats : Statistics, optional

    Returns
    -------
    float
        Higher is better. Depends on D and on the feature scale: compare backbones at the
        same ε, and beware that it grows with D.

    Shape
    -----
    features (N, D), labels (N,).

    Notes
    -----
    As TLlib: Z is the globally centred feature matrix, Z_c its rows of class c (not
    re-centred), and n in ``R(Z_c)`` is n_c. ``R(Z)`` comes from the eigenvalues of the shared
    centred Gram matrix; each ``R(Z_c)`` from a Cholesky factor of the smaller of Z_cᵀZ_c and
    Z_cZ_cᵀ (Sylvester's identity), so many small classes cost little. On streamed statistics
    ``Z_cᵀZ_c = S_c + n_c (μ_c - μ)(μ_c - μ)ᵀ`` from the per-class scatter matrices S_c
    (``StreamingStatistics(class_scatter=True)``).

    References
    ----------
    .. [1] L.-K. Huang, J. Huang, Y. Rong, Q. Yang, Y. Wei. Frustratingly Easy Transferability
       Estimation. ICML 2022.
    """
    if not eps > 0:
        raise ValueError(f"eps must be positive; got {eps}")
    stats = resolve_stats(features, labels, stats)
    n, d = stats.n_samples, stats.n_features
    backend = stats.backend
    if n > d or stats.streamed:  # from the shared eigenvalues of the centred Gram matrix
        total = 0.5 * float(np.sum(np.log1p(np.clip(stats.centered_gram_eigh[0], 0.0, None) / (n * eps))))
    else:
        total = _coding_rate(backend.kernel(stats._require_features() - stats.mean), n, eps, backend)
    per_class = 0.0
    if stats.streamed:
        scatters, offsets, counts = stats.class_scatters, stats.centered_class_means, stats.counts
        for c in range(stats.n_classes):
            gram_like = scatters[c] + counts[c] * np.outer(offsets[c], offsets[c])
            per_class += _coding_rate(gram_like, int(counts[c]), eps, backend)
    else:
        features_ = stats._require_features()
        for rows in stats.class_indices:
            per_class += _coding_rate(backend.small_gram(features_[rows] - stats.mean), rows.shape[0], eps, backend)
    return float(total - per_class / stats.n_classes)


class TransRate(TransferabilityEstimator):
    """Estimator wrapper of :func:`transrate`."""

    _estimator_name = "transrate"

    def __init__(self, *, eps: float = 1e-4) -> None:
        self.eps = eps
