"""NCTI: Neural Collapse inspired Transferability Index (Wang, Luo, Zheng, Huang & Baktashmotlagh, ICCV 2023)."""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from ._base import TransferabilityEstimator
from ._registry import register
from ._stats import Statistics, resolve_stats

__all__ = ["ncti", "ncti_terms", "NCTI"]

#: The official shrinkage floor; at the floor the official code switches to the SVD solver.
_MIN_SHRINKAGE = 1e-10
#: Leading PCA variances summed for the shrinkage ``exp(-Σ)`` (official: ``explained_variance_[:32]``).
_SHRINKAGE_COMPONENTS = 32
_TERMS = ("ncti", "ncc", "seli", "vc")


def _pca(stats: Statistics, k: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Exact PCA to k components: (coordinates (N, k), explained variances (k,) with ddof 1)."""

    def compute() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        values = np.clip(stats.centered_gram_eigh[0][::-1][:k], 0.0, None) / (stats.n_samples - 1)
        return stats.centered_dot(stats.top_principal_axes(k)), values

    return stats.memo(("pca_exact", k), compute)


def _pca_components(pca_dim: int, n: int, d: int) -> int:
    """``pca_dim`` wherever the official ``PCA(n_components=pca_dim)`` runs (pca_dim <= min(N, D), even when
    that keeps a component of the centred data's null space at N == pca_dim); min(pca_dim, N - 1, D) where
    it refuses."""
    return pca_dim if pca_dim <= min(n, d) else min(pca_dim, n - 1, d)


def ncti_terms(stats: Statistics, pca_dim: int | None = 64) -> dict[str, float]:
    """The official NCTI terms of one backbone, before any normalisation.

    Returns ``{"seli": ‖Z‖_*, "ncc": mean p(y_i | x_i), "vc": log Σ_c ‖P_c‖_*, "rank": r}`` where Z
    is the centred (N, r) LDA projection and P_c the LDA posteriors of class c (the triple
    ``NCTI_Score`` returns, plus the projection's width r).
    """
    features = stats._require_features()
    labels = stats._require_labels()
    n, d = features.shape
    if not np.ptp(features, axis=0).any():
        raise ValueError(
            "features have zero variance (every sample has the same feature vector); ncti's LDA is undefined — "
            "check the feature extraction"
        )
    if pca_dim is None:
        reduced = features
        variances = np.clip(stats.centered_gram_eigh[0][::-1], 0.0, None) / (n - 1)
    else:
        reduced, variances = _pca(stats, _pca_components(pca_dim, n, d))
    shrinkage = max(float(np.exp(-variances[:_SHRINKAGE_COMPONENTS].sum())), _MIN_SHRINKAGE)
    if shrinkage == _MIN_SHRINKAGE:
        model = LinearDiscriminantAnalysis(solver="svd")
    else:
        model = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage)
    with warnings.catch_warnings():
        # the SVD solver warns about collinear (rank-deficient) features and then drops them, as intended
        warnings.filterwarnings("ignore", message="Variables are collinear", category=UserWarning)
        try:
            projected = model.fit(reduced, labels).transform(reduced)
        except np.linalg.LinAlgError as err:
            raise ValueError(
                f"ncti: the shrinkage LDA could not be fitted ({err}); the within-class scatter is singular — "
                "does every class collapse to a single point?"
            ) from err
        posteriors = model.predict_proba(reduced)
    projected = projected - projected.mean(axis=0, keepdims=True)
    seli = float(np.linalg.norm(projected, ord="nuc"))
    ncc = float(np.mean(posteriors[np.arange(n), labels]))
    class_nuclear = sum(float(np.linalg.norm(posteriors[rows], ord="nuc")) for rows in stats.class_indices)
    return {"seli": seli, "ncc": ncc, "vc": float(np.log(class_nuclear)), "rank": float(projected.shape[1])}


def _vc_bounds(counts: NDArray[np.float64]) -> tuple[float, float]:
    """Range of ``log Σ_c ‖P_c‖_*`` over all row-stochastic posteriors, for these class sizes.

    Minimum: ``‖P_c‖_* >= sqrt(n_c / C)`` (pair P_c with the unit-spectral-norm matrix
    ``1 1ᵀ / sqrt(n_c C)``), attained by uniform rows. Maximum: the nuclear norm is convex, so it
    peaks at a vertex of the product of simplices, i.e. one-hot rows, where ``‖P_c‖_* = Σ_k sqrt(m_k)``
    (m_k rows on class k); concavity of sqrt makes the even split best:
    ``(C - m) sqrt(q) + m sqrt(q + 1)`` with ``n_c = q C + m`` (just n_c when n_c <= C).
    """
    n_classes = counts.size
    sizes = counts.astype(np.int64)
    q, m = np.divmod(sizes, n_classes)
    peaks = (n_classes - m) * np.sqrt(q) + m * np.sqrt(q + 1)
    low = float(np.log(np.sum(np.sqrt(counts / n_classes))))
    high = float(np.log(np.sum(peaks)))
    return low, high


@register(
    "ncti",
    family="class-mean",
    reference="Wang et al., How Far Pre-trained Models Are from Neural Collapse on the Target Dataset Informs "
    "their Transferability, ICCV 2023 (BUserName/NCTI metrics.py NCTI_Score), made pool-free",
)
def ncti(
    features: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    *,
    pca_dim: int | None = 64,
    term: str = "ncti",
    stats: Statistics | None = None,
) -> float:
    """NCTI, pool-free: neural-collapse proxies on an LDA projection, each put on a unit scale by a fixed map.

    The official terms (after PCA to 64 dims and a shrinkage LDA, λ = max(exp(-Σ_{k<=32} var_k),
    1e-10), SVD solver when λ hits the floor):

    * ``seli = ‖Z‖_*``, nuclear norm of the centred LDA projection Z (N x r, r = min(C - 1, dims));
    * ``ncc = (1/N) Σ_i p(y_i | x_i)``, the LDA posterior of the true class;
    * ``vc = log Σ_c ‖P_c‖_*``, P_c the posterior rows of class c (lower is better).

    The official score min-max normalises each term *across the candidate backbones*
    (``ŝ = (s - min) / (max - min)`` in ``evaluate_metric_group1_cpu.py``) and returns
    ``ŝ_ncc + ŝ_seli - ŝ_vc``, so adding a backbone changes every other score. Here each term is
    mapped by a fixed rule that depends only on this backbone's features and on the dataset
    (N, C, class sizes), never on other candidates:

    * ``ncc`` is already a probability in [0, 1] and is used as is;
    * ``seli`` becomes ``1 - r·sqrt(N) / ‖Z‖_*``. LDA whitens the within-class scatter (exactly
      with the SVD solver, up to the shrinkage with the eigen solver), so the singular values of
      Z are about ``sqrt(N (1 + e_k))`` with e_k >= 0 the Fisher ratios: the map is about 0
      without class separation and tends to 1 as the classes separate (monotone in ‖Z‖_*);
    * ``vc`` becomes ``(vc - lo) / (hi - lo)`` with the exact attainable range of the term for
      these class sizes: ``lo = log Σ_c sqrt(n_c / C)`` (uniform posteriors) and
      ``hi = log Σ_c [(C - m_c) sqrt(q_c) + m_c sqrt(q_c + 1)]``, ``n_c = q_c C + m_c`` (one-hot
      posteriors spread as evenly as possible over the classes).

    ``NCTI = ncc + seli' - vc'``: the official signs and equal weights, each term on a unit
    scale. Within one dataset each map is increasing (``seli``) or affine, so every term orders
    backbones exactly as the official term does; only the relative weights differ from the
    pool-dependent min-max.

    Parameters
    ----------
    features : array-like of shape (N, D), optional
    labels : array-like of shape (N,), optional
    pca_dim : int or None, default=64
        PCA dimension (official 64); None runs the LDA on the raw features.
    term : {"ncti", "ncc", "seli", "vc"}, default="ncti"
        "ncti" returns the pool-free score above; the others return one official raw term
        (for checks against ``NCTI_Score``; "vc" is lower-is-better).
    stats : Statistics, optional

    Returns
    -------
    float
        The pool-free NCTI, in about [-1, 2]; higher is better.

    Shape
    -----
    features (N, D) -> PCA (N, k) -> LDA projection (N, min(C - 1, k)), with k = pca_dim when
    pca_dim <= min(N, D), else min(pca_dim, N - 1, D).

    Notes
    -----
    The official PCA is ``PCA(n_components=64)``, whose default solver is randomized and
    unseeded for large inputs; we use the exact PCA (the shared eigendecomposition of the
    centred Gram matrix), which the randomized one approximates. LDA is scikit-learn's
    ``LinearDiscriminantAnalysis`` as in the official code. Wherever the official code runs
    (64 <= min(N, D)) we keep its 64 components, even at N = 64 where one of them spans only
    rounding noise; where it fails (min(N, D) < 64) we keep min(64, N - 1, D) components (N - 1:
    the centred data has no variance beyond that).

    References
    ----------
    .. [1] Z. Wang, Y. Luo, L. Zheng, Z. Huang, M. Baktashmotlagh. How Far Pre-trained Models Are
       from Neural Collapse on the Target Dataset Informs their Transferability. ICCV 2023.
    """
    if term not in _TERMS:
        raise ValueError(f"unknown term {term!r}; use one of {_TERMS}")
    if pca_dim is not None and (isinstance(pca_dim, bool) or not isinstance(pca_dim, int | np.integer) or pca_dim < 1):
        raise ValueError(f"pca_dim must be a positive integer or None; got {pca_dim!r}")
    stats = resolve_stats(features, labels, stats)
    terms = stats.memo(("ncti_terms", pca_dim), lambda: ncti_terms(stats, pca_dim))
    if term != "ncti":
        return terms[term]
    seli = 1.0 - terms["rank"] * np.sqrt(stats.n_samples) / terms["seli"]
    low, high = _vc_bounds(stats.counts)
    vc = (terms["vc"] - low) / (high - low)
    return float(terms["ncc"] + seli - vc)


class NCTI(TransferabilityEstimator):
    """Estimator wrapper of :func:`ncti`."""

    _estimator_name = "ncti"

    def __init__(self, *, pca_dim: int | None = 64, term: str = "ncti") -> None:
        self.pca_dim = pca_dim
        self.term = term
