"""Shared sufficient statistics: computed lazily, at most once, and reused by every estimator.

The expensive pieces of most closed-form scores are the same few matrices: the (centred) Gram
matrix FᵀF, its eigendecomposition, class counts and means. ``Statistics`` computes each on
first use and caches it, so scoring a backbone with many estimators costs little more than
the most expensive one alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any, TypeVar

import numpy as np
import scipy.sparse
from numpy.typing import ArrayLike, NDArray

from ._validation import check_features, check_labels, check_source_probs

__all__ = ["Statistics", "resolve_stats"]

T = TypeVar("T")

#: Rows per block when streaming over the features (bounds the temporary memory to
#: block_size x D float64 while keeping BLAS efficient).
DEFAULT_BLOCK_SIZE = 8192


class Statistics:
    """Validated inputs plus lazily computed, cached statistics of one backbone's features.

    Parameters
    ----------
    features : array-like of shape (N, D), optional
        Pooled features of the target samples; any float dtype, stored as float64.
    labels : array-like of shape (N,), optional
        Class labels (ints or strings); relabelled to ``0..C-1`` in sorted order.
    source_probs : array-like of shape (N, C_s), optional
        The source classifier's softmax outputs (for LEEP and NCE).
    block_size : int, default=8192
        Rows per block when streaming over the features.

    Attributes
    ----------
    features : ndarray of shape (N, D) or None
    labels : ndarray of shape (N,) or None
        Class codes in ``0..C-1``.
    classes : ndarray of shape (C,) or None
        The original label of each class code.
    source_probs : ndarray of shape (N, C_s) or None

    Notes
    -----
    Every cached quantity is computed in float64 on first access. The centred Gram matrix is
    accumulated block-wise from mean-centred rows (numerically better than subtracting
    ``N μμᵀ`` from the raw Gram matrix).

    Examples
    --------
    >>> import numpy as np
    >>> from estimators import Statistics, score
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 20)
    >>> F = rng.normal(size=(60, 8)) + y[:, None]
    >>> stats = Statistics(F, y)
    >>> round(score("logme", stats=stats), 4) == round(score("logme", F, y), 4)
    True
    """

    def __init__(
        self,
        features: ArrayLike | None = None,
        labels: ArrayLike | None = None,
        *,
        source_probs: ArrayLike | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        if features is None and labels is None:
            raise ValueError("Statistics needs features (N, D), labels (N,), or both")
        self.features: NDArray[np.float64] | None = None if features is None else check_features(features)
        n_samples = None if self.features is None else self.features.shape[0]
        self.labels: NDArray[np.intp] | None = None
        self.classes: NDArray[Any] | None = None
        if labels is not None:
            self.labels, self.classes = check_labels(labels, n_samples)
            n_samples = self.labels.shape[0]
        self.source_probs = None if source_probs is None else check_source_probs(source_probs, int(n_samples))
        self.n_samples: int = int(n_samples)  # type: ignore[arg-type]
        self.block_size = int(block_size)
        self._memo: dict[Any, Any] = {}

    # -- shapes -------------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return self._require_features().shape[1]

    @property
    def n_classes(self) -> int:
        return int(self._require_labels().max()) + 1

    def _require_features(self) -> NDArray[np.float64]:
        if self.features is None:
            raise ValueError("this estimator needs features (N, D); build Statistics(features, labels)")
        return self.features

    def _require_labels(self) -> NDArray[np.intp]:
        if self.labels is None:
            raise ValueError("this estimator needs class labels; build Statistics(features, labels)")
        return self.labels

    # -- classes ------------------------------------------------------------------------------
    @cached_property
    def counts(self) -> NDArray[np.float64]:
        """Samples per class, shape (C,)."""
        return np.bincount(self._require_labels(), minlength=self.n_classes).astype(np.float64)

    @cached_property
    def priors(self) -> NDArray[np.float64]:
        """Class frequencies n_c / N, shape (C,)."""
        return self.counts / self.n_samples

    @cached_property
    def indicator(self) -> scipy.sparse.csr_matrix:
        """Sparse class-membership matrix, shape (C, N): ``indicator @ X`` sums X's rows per class."""
        labels = self._require_labels()
        n = labels.shape[0]
        return scipy.sparse.csr_matrix(
            (np.ones(n), (labels, np.arange(n))), shape=(self.n_classes, n)
        )

    @cached_property
    def class_indices(self) -> list[NDArray[np.intp]]:
        """Row indices of each class, in ascending order."""
        labels = self._require_labels()
        order = np.argsort(labels, kind="stable")
        bounds = np.cumsum(np.bincount(labels, minlength=self.n_classes))[:-1]
        return np.split(order, bounds)

    # -- first moments ------------------------------------------------------------------------
    @cached_property
    def mean(self) -> NDArray[np.float64]:
        """Global feature mean, shape (D,)."""
        return self._require_features().mean(axis=0)

    @cached_property
    def class_sums(self) -> NDArray[np.float64]:
        """Per-class sums of the raw features, shape (C, D)."""
        return np.asarray(self.indicator @ self._require_features())

    @cached_property
    def class_means(self) -> NDArray[np.float64]:
        """Class means μ_c, shape (C, D)."""
        return self.class_sums / self.counts[:, None]

    @cached_property
    def centered_class_means(self) -> NDArray[np.float64]:
        """Class means minus the global mean, shape (C, D)."""
        return self.class_means - self.mean

    # -- second moments -----------------------------------------------------------------------
    def iter_centered_blocks(self) -> Iterator[tuple[slice, NDArray[np.float64]]]:
        """Yield ``(rows, block)`` of mean-centred features, ``block_size`` rows at a time.

        The block lives in one reused buffer: consume it before the next iteration.
        """
        features = self._require_features()
        n = features.shape[0]
        buffer = np.empty((min(self.block_size, n), features.shape[1]))
        for start in range(0, n, self.block_size):
            rows = slice(start, min(start + self.block_size, n))
            block = buffer[: rows.stop - rows.start]
            np.subtract(features[rows], self.mean, out=block)
            yield rows, block

    @cached_property
    def centered_gram(self) -> NDArray[np.float64]:
        """(F - μ)ᵀ(F - μ), shape (D, D): N times the biased total covariance."""
        d = self.n_features
        gram = np.zeros((d, d))
        for _, block in self.iter_centered_blocks():
            gram += block.T @ block  # numpy dispatches Aᵀ·A to BLAS syrk
        return _symmetrize(gram)

    @cached_property
    def centered_sq_norms(self) -> NDArray[np.float64]:
        """‖f_i - μ‖² for every sample, shape (N,)."""
        out = np.empty(self.n_samples)
        for rows, block in self.iter_centered_blocks():
            out[rows] = np.einsum("ij,ij->i", block, block)
        return out

    @cached_property
    def between_scatter_sum(self) -> NDArray[np.float64]:
        """Σ_c n_c (μ_c - μ)(μ_c - μ)ᵀ, shape (D, D)."""
        centred = self.centered_class_means
        return _symmetrize((centred.T * self.counts) @ centred)

    @cached_property
    def within_scatter(self) -> NDArray[np.float64]:
        """Σ_c π_c Cov_biased(class c) = (centred Gram - between sum) / N, shape (D, D)."""
        return (self.centered_gram - self.between_scatter_sum) / self.n_samples

    @cached_property
    def kernel(self) -> NDArray[np.float64]:
        """F Fᵀ, shape (N, N): used instead of FᵀF when D >= N."""
        features = self._require_features()
        return _symmetrize(features @ features.T)

    # -- eigendecompositions --------------------------------------------------------------------
    @cached_property
    def kernel_eigh(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Eigenvalues (ascending, clipped at 0) and eigenvectors of F Fᵀ."""
        values, vectors = np.linalg.eigh(self.kernel)
        return np.clip(values, 0.0, None), vectors

    @cached_property
    def centered_gram_eigh(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Eigenvalues (ascending, not clipped) and eigenvectors of the centred Gram matrix.

        The one D x D eigendecomposition shared by LogME (with a rank-one update for the mean),
        H-score, shrinkage H-score, TransRate and GBC's PCA.
        """
        return np.linalg.eigh(self.centered_gram)

    def top_principal_axes(self, k: int) -> NDArray[np.float64]:
        """The k leading principal axes (eigenvectors of the centred Gram), shape (D, k), largest first."""
        return np.ascontiguousarray(self.centered_gram_eigh[1][:, ::-1][:, :k])

    # -- products -----------------------------------------------------------------------------
    def centered_dot(self, matrix: NDArray[np.float64]) -> NDArray[np.float64]:
        """(F - μ) @ matrix without materialising the centred features, shape (N, k)."""
        features = self._require_features()
        return features @ matrix - self.mean @ matrix

    def memo(self, key: Any, compute: Callable[[], T]) -> T:
        """Cache an estimator-specific intermediate shared by several estimators."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]  # type: ignore[no-any-return]


def _symmetrize(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    matrix += matrix.T
    matrix *= 0.5
    return matrix


def resolve_stats(
    features: ArrayLike | None,
    labels: ArrayLike | None,
    stats: Statistics | None,
    *,
    source_probs: ArrayLike | None = None,
) -> Statistics:
    """Use ``stats`` when given (then features/labels must be omitted), else build one."""
    if stats is None:
        return Statistics(features, labels, source_probs=source_probs)
    if features is not None or labels is not None or source_probs is not None:
        raise ValueError(
            "pass either stats=Statistics(...) or features/labels/source_probs, not both "
            "(build the Statistics with everything the estimators need)"
        )
    if not isinstance(stats, Statistics):
        raise ValueError(f"stats must be an estimators.Statistics; got {type(stats).__name__}")
    return stats
