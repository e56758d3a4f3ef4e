"""PARC: Pairwise Annotation Representation Comparison (Bolya, Mittapalli & Hoffman, NeurIPS 2021)."""

from __future__ import annotations

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike, NDArray
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from ._base import TransferabilityEstimator
from ._registry import register
from ._stats import Statistics, resolve_stats

__all__ = ["parc", "PARC"]

#: The official ``feature_reduce``: randomized PCA with a fixed seed and one power iteration.
_PCA_SEED = 1919
_PCA_POWER_ITERATIONS = 1


def _reduce(features: NDArray[np.float64], pca_dim: int | None) -> NDArray[np.float64]:
    if pca_dim is None:
        return features
    n, d = features.shape
    k = min(pca_dim, n - 1, d)
    reduced: NDArray[np.float64] = PCA(
        n_components=k, svd_solver="randomized", random_state=_PCA_SEED, iterated_power=_PCA_POWER_ITERATIONS
    ).fit_transform(features)
    return reduced


@register(
    "parc",
    family="sample",
    reference="Bolya et al., Scalable Diverse Model Selection for Accessible Transfer Learning, NeurIPS 2021 "
    "(dbolya/parc methods.py)",
)
def parc(
    features: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    *,
    pca_dim: int | None = 32,
    stats: Statistics | None = None,
) -> float:
    """PARC: Spearman correlation between the samples' feature dissimilarities and label dissimilarities.

    Features are reduced by randomized PCA to ``pca_dim`` dimensions and standardised; then
    ``RDM_F = 1 - corr(F)`` and ``RDM_Y = 1 - corr(Y)`` are the N x N Pearson correlations between
    *samples* (rows), Y the one-hot labels, and
    ``PARC = 100 · Spearman(upper triangle of RDM_F, upper triangle of RDM_Y)`` (diagonal excluded).

    Parameters
    ----------
    features : array-like of shape (N, D), optional
    labels : array-like of shape (N,), optional
    pca_dim : int or None, default=32
        PCA dimension (the official f = 32); None uses the raw (standardised) features.
    stats : Statistics, optional

    Returns
    -------
    float
        In [-100, 100]; higher is better.

    Shape
    -----
    features (N, D) -> PCA (N, min(pca_dim, N - 1, D)); two N x N dissimilarity matrices, so time
    and memory grow with N² (the paper uses 500-image probe sets).

    Notes
    -----
    Reproduces dbolya/parc ``PARC(n_dims=32)``: ``PCA(n_components=32, svd_solver='randomized',
    random_state=1919, iterated_power=1)``, ``StandardScaler``, ``np.corrcoef``, the strict upper
    triangles (``np.triu_indices(N, 1)``) and ``scipy.stats.spearmanr`` x 100. The value depends
    on this approximate PCA (an exact PCA moves it by several percent), so we call sklearn exactly
    as the official code does, on float64 features. Deliberate deviations, only where the official
    code breaks: it caps the PCA dimension at N, which keeps a zero-variance component whose
    rounding noise ``StandardScaler`` then blows up to unit variance, so we cap at N - 1; and it
    fails when D < 32, where we use min(32, D) components. Unlike the SFDA/ETran copies we never
    subsample (their 15k-sample cap is dead code there anyway).

    References
    ----------
    .. [1] D. Bolya, R. Mittapalli, J. Hoffman. Scalable Diverse Model Selection for Accessible
       Transfer Learning. NeurIPS 2021.
    """
    if pca_dim is not None and (isinstance(pca_dim, bool) or not isinstance(pca_dim, int | np.integer) or pca_dim < 2):
        raise ValueError(f"pca_dim must be an integer >= 2 or None; got {pca_dim!r}")
    stats = resolve_stats(features, labels, stats)
    features_ = stats._require_features()
    labels_ = stats._require_labels()
    if features_.shape[1] < 2:
        raise ValueError(
            f"parc correlates samples across feature dimensions and needs at least 2 features; got {features_.shape[1]}"
        )
    if not np.ptp(features_, axis=0).any():
        raise ValueError(
            "features have zero variance (every sample has the same feature vector); parc is undefined — check "
            "the feature extraction"
        )
    scaled = StandardScaler().fit_transform(_reduce(features_, pca_dim))
    one_hot = np.eye(stats.n_classes)[labels_]
    with np.errstate(divide="ignore", invalid="ignore"):
        rdm_features = 1.0 - np.corrcoef(scaled)
    rdm_labels = 1.0 - np.asarray(np.corrcoef(one_hot))  # (N, N); corrcoef's stub also allows a scalar
    upper = np.triu_indices(features_.shape[0], 1)
    lt_features, lt_labels = rdm_features[upper], rdm_labels[upper]
    del rdm_features, rdm_labels
    if not np.isfinite(lt_features).all():
        constant = np.flatnonzero(np.ptp(scaled, axis=1) == 0)
        raise ValueError(
            f"samples {constant[:5].tolist()} have identical values in every (standardised) feature dimension, "
            "so their correlation with other samples is undefined; check the feature extraction for those samples"
        )
    if np.ptp(lt_features) == 0:
        raise ValueError("all pairwise feature correlations are equal (degenerate features); parc is undefined")
    return float(scipy.stats.spearmanr(lt_features, lt_labels)[0] * 100)


class PARC(TransferabilityEstimator):
    """Estimator wrapper of :func:`parc`."""

    _estimator_name = "parc"

    def __init__(self, *, pca_dim: int | None = 32) -> None:
        self.pca_dim = pca_dim
