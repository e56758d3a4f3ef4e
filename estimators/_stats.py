"""Shared sufficient statistics: computed lazily, at most once, and reused by every estimator.

The expensive pieces of most closed-form scores are the same few matrices: the (centred) Gram
matrix FᵀF, its eigendecomposition, class counts and means. ``Statistics`` computes each on
first use and caches it, so scoring a backbone with many estimators costs little more than
the most expensive one alone.

A ``Statistics`` is either built from the samples in memory or *streamed*: accumulated batch by
batch by :class:`~estimators.StreamingStatistics`, which keeps only moments (counts, means, the
centred Gram matrix, ...). The estimators that need the individual samples then raise
:class:`SamplesRequiredError`. The heavy kernels run on a :mod:`backend <estimators._backend>`
(numpy, or PyTorch on CPU / CUDA).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from typing import Any, TypeVar, cast

import numpy as np
import scipy.sparse
from numpy.typing import ArrayLike, NDArray

from ._backend import Backend, get_backend
from ._linalg import symmetrize
from ._moments import MomentAccumulator, StreamedMoments
from ._validation import check_features, check_labels, check_source_probs

__all__ = ["Statistics", "SamplesRequiredError", "resolve_stats"]

T = TypeVar("T")

#: Rows per block when streaming over the features (bounds the temporary memory to
#: block_size x D float64 while keeping BLAS efficient).
DEFAULT_BLOCK_SIZE = 8192


class SamplesRequiredError(ValueError):
    """An estimator needs per-sample data that a streamed :class:`Statistics` does not keep.

    ``score`` re-raises it naming the estimator; catch it to skip such estimators on streamed
    statistics (the ranking pipeline reports them with a null score and this message).
    """


_STREAMED_HINT = (
    "this Statistics was accumulated batch by batch (StreamingStatistics / Statistics.from_batches) and keeps "
    "only moments; score this estimator on in-memory features, Statistics(features, labels), or drop it"
)


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
    backend : {"numpy", "torch"}, optional
        Where the heavy linear algebra runs (Gram matrix, eigendecompositions, solves, N x D
        products), always in float64. None: the default set by :func:`estimators.use_backend`
        (numpy unless changed). ``"torch"`` needs PyTorch.
    device : str, optional
        torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``); None: CUDA when present, else CPU.

    Attributes
    ----------
    features : ndarray of shape (N, D) or None
    labels : ndarray of shape (N,) or None
        Class codes in ``0..C-1``.
    classes : ndarray of shape (C,) or None
        The original label of each class code.
    source_probs : ndarray of shape (N, C_s) or None
    streamed : bool
        True for statistics accumulated by :class:`~estimators.StreamingStatistics`: then
        ``features``, ``labels`` and ``source_probs`` raise :class:`SamplesRequiredError`.
    backend : Backend

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
        backend: str | Backend | None = None,
        device: str | None = None,
    ) -> None:
        if features is None and labels is None:
            raise ValueError("Statistics needs features (N, D), labels (N,), or both")
        self._features: NDArray[np.float64] | None = None if features is None else check_features(features)
        n_samples: int | None = None if self._features is None else self._features.shape[0]
        self._labels: NDArray[np.intp] | None = None
        self.classes: NDArray[Any] | None = None
        if labels is not None:
            self._labels, self.classes = check_labels(labels, n_samples)
            n_samples = self._labels.shape[0]
        assert n_samples is not None  # features or labels were given (checked above)
        self._source_probs = None if source_probs is None else check_source_probs(source_probs, int(n_samples))
        self.n_samples: int = int(n_samples)
        self._n_features = None if self._features is None else int(self._features.shape[1])
        self._n_classes = None if self.classes is None else int(self.classes.shape[0])
        self._has_source_probs = self._source_probs is not None
        self.streamed = False
        self.block_size = int(block_size)
        self.backend: Backend = get_backend(backend, device)
        self._memo: dict[Any, Any] = {}

    @classmethod
    def _from_moments(
        cls,
        moments: StreamedMoments,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        backend: str | Backend | None = None,
        device: str | None = None,
    ) -> Statistics:
        """A streamed Statistics: no samples, its cached properties filled from accumulated moments."""
        stats = cls.__new__(cls)
        stats._features = stats._labels = stats._source_probs = None
        stats.classes = moments.classes
        stats.n_samples = int(moments.n_samples)
        stats._n_features = int(moments.n_features)
        stats._n_classes = int(moments.classes.shape[0])
        stats._has_source_probs = bool(moments.has_source_probs)
        stats.streamed = True
        stats.block_size = int(block_size)
        stats.backend = get_backend(backend, device)
        stats._memo = {}
        stats.__dict__.update(moments.cached)  # pre-fills the cached_property values
        return stats

    @classmethod
    def from_batches(
        cls,
        batches: Iterable[tuple[ArrayLike, ...]],
        *,
        n_classes: int | None = None,
        class_scatter: bool = False,
        backend: str | Backend | None = None,
        device: str | None = None,
    ) -> Statistics:
        """Accumulate ``(features, labels[, source_probs])`` batches; memory independent of N.

        Shorthand for feeding a :class:`~estimators.StreamingStatistics` and finalising it; see
        there for the parameters and for which estimators work on the result.
        """
        stream = MomentAccumulator(n_classes, class_scatter=class_scatter, backend=backend, device=device)
        for batch in batches:
            stream.update(*batch)
        return cls._from_moments(stream.moments(), backend=stream.backend)

    # -- samples ------------------------------------------------------------------------------
    @property
    def features(self) -> NDArray[np.float64] | None:
        """The (N, D) float64 features; raises :class:`SamplesRequiredError` when streamed."""
        if self.streamed:
            raise SamplesRequiredError(f"it needs the individual feature rows; {_STREAMED_HINT}")
        return self._features

    @property
    def labels(self) -> NDArray[np.intp] | None:
        """Class codes (N,) in 0..C-1; raises :class:`SamplesRequiredError` when streamed."""
        if self.streamed:
            raise SamplesRequiredError(f"it needs the label of every sample; {_STREAMED_HINT}")
        return self._labels

    @property
    def source_probs(self) -> NDArray[np.float64] | None:
        """Source softmax outputs (N, C_s) or None; streamed: raises if they were streamed."""
        if self.streamed and self._has_source_probs:
            raise SamplesRequiredError(
                "it needs the source probabilities of every sample (streaming keeps only the class x "
                f"source-class joint tables); {_STREAMED_HINT}"
            )
        return self._source_probs

    @property
    def has_source_probs(self) -> bool:
        """Whether source-head probabilities were given (in memory or streamed)."""
        return self._has_source_probs

    # -- shapes -------------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        if self._n_features is None:
            self._require_features()  # raises: built without features
            raise AssertionError("no features, yet _require_features returned")
        return self._n_features

    @property
    def n_classes(self) -> int:
        if self._n_classes is None:
            self._require_labels()  # raises: built without labels
            raise AssertionError("no labels, yet _require_labels returned")
        return self._n_classes

    def _require_features(self) -> NDArray[np.float64]:
        features = self.features
        if features is None:
            raise ValueError("this estimator needs features (N, D); build Statistics(features, labels)")
        return features

    def _require_labels(self) -> NDArray[np.intp]:
        labels = self.labels
        if labels is None:
            raise ValueError("this estimator needs class labels; build Statistics(features, labels)")
        return labels

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
        return scipy.sparse.csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(self.n_classes, n))

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
        mean: NDArray[np.float64] = self._require_features().mean(axis=0)
        return mean

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
        return self.backend.centered_gram(self._require_features(), self.mean, self.block_size)

    @cached_property
    def centered_sq_norms(self) -> NDArray[np.float64]:
        """‖f_i - μ‖² for every sample, shape (N,)."""
        out = np.empty(self.n_samples)
        for rows, block in self.iter_centered_blocks():
            out[rows] = np.einsum("ij,ij->i", block, block)
        return out

    @cached_property
    def centered_fourth_moment(self) -> float:
        """Σ_i ‖f_i - μ‖⁴ (Ledoit-Wolf's shrinkage needs it; streamed it comes from merged moments)."""
        return float(np.sum(self.centered_sq_norms**2))

    @cached_property
    def class_sq_deviations(self) -> NDArray[np.float64]:
        """Σ_{i in c} (f_i - μ_c)² per dimension, shape (C, D): n_c times the per-class variances."""
        residual = self._require_features() - self.class_means[self._require_labels()]
        return np.asarray(self.indicator @ residual**2)

    @cached_property
    def class_scatters(self) -> NDArray[np.float64]:
        """Σ_{i in c} (f_i - μ_c)(f_i - μ_c)ᵀ per class, shape (C, D, D).

        Streamed statistics have it only when built with ``class_scatter=True`` (C·D² floats).
        """
        if self.streamed:
            raise SamplesRequiredError(
                "it needs each class's D x D scatter matrix, which this streamed Statistics did not keep; "
                "build it with StreamingStatistics(class_scatter=True) (C·D² floats of memory), or score it "
                "on in-memory features"
            )
        features = self._require_features()
        out = np.empty((self.n_classes, self.n_features, self.n_features))
        for c, rows in enumerate(self.class_indices):
            block = features[rows] - self.class_means[c]
            out[c] = symmetrize(block.T @ block)
        return out

    @cached_property
    def between_scatter_sum(self) -> NDArray[np.float64]:
        """Σ_c n_c (μ_c - μ)(μ_c - μ)ᵀ, shape (D, D)."""
        centred = self.centered_class_means
        return symmetrize((centred.T * self.counts) @ centred)

    @cached_property
    def within_scatter(self) -> NDArray[np.float64]:
        """Σ_c π_c Cov_biased(class c) = (centred Gram - between sum) / N, shape (D, D)."""
        return (self.centered_gram - self.between_scatter_sum) / self.n_samples

    @cached_property
    def kernel(self) -> NDArray[np.float64]:
        """F Fᵀ, shape (N, N): used instead of FᵀF when D >= N."""
        return self.backend.kernel(self._require_features())

    # -- source head ------------------------------------------------------------------------------
    @cached_property
    def source_joint(self) -> NDArray[np.float64]:
        """Σ_i θ_i(z) 1[y_i = y]: the class x source-class table of summed source probabilities (C, C_s)."""
        theta = self.source_probs
        if theta is None:
            raise ValueError("this estimator needs source_probs: the source classifier's softmax outputs (N, C_s)")
        return np.asarray(self.indicator @ theta)

    @cached_property
    def hard_source_joint(self) -> NDArray[np.float64]:
        """Counts of (class y, source argmax z) pairs, shape (C, C_s); ties go to the lowest z."""
        theta = self.source_probs
        if theta is None:
            raise ValueError("this estimator needs source_probs: the source classifier's softmax outputs (N, C_s)")
        n_source = theta.shape[1]
        pairs = self._require_labels() * n_source + theta.argmax(axis=1)
        counts = np.bincount(pairs, minlength=self.n_classes * n_source)
        return counts.reshape(self.n_classes, n_source).astype(np.float64)

    # -- eigendecompositions --------------------------------------------------------------------
    @cached_property
    def kernel_eigh(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Eigenvalues (ascending, clipped at 0) and eigenvectors of F Fᵀ."""
        values, vectors = self.backend.eigh(self.kernel)
        return np.clip(values, 0.0, None), vectors

    @cached_property
    def centered_gram_eigh(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Eigenvalues (ascending, not clipped) and eigenvectors of the centred Gram matrix.

        The one D x D eigendecomposition shared by LogME (with a rank-one update for the mean),
        H-score, shrinkage H-score, TransRate and GBC's PCA.
        """
        return self.backend.eigh(self.centered_gram)

    def top_principal_axes(self, k: int) -> NDArray[np.float64]:
        """The k leading principal axes (eigenvectors of the centred Gram), shape (D, k), largest first."""
        return np.ascontiguousarray(self.centered_gram_eigh[1][:, ::-1][:, :k])

    # -- products -----------------------------------------------------------------------------
    def centered_dot(self, matrix: NDArray[np.float64]) -> NDArray[np.float64]:
        """(F - μ) @ matrix without materialising the centred features, shape (N, k)."""
        return self.backend.centered_dot(self._require_features(), self.mean, matrix)

    def dot(self, matrix: NDArray[np.float64]) -> NDArray[np.float64]:
        """F @ matrix on the backend, shape (N, k)."""
        return self.backend.dot(self._require_features(), matrix)

    def weighted_class_scatter(
        self, offsets: NDArray[np.float64], weights: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """One pass: ``Σ_i w_i² z_i z_iᵀ`` (D, D) and per-class ``Σ_i w_i z_i`` (C, D), z_i = f_i - μ - offsets[y_i]."""
        return self.backend.weighted_class_scatter(
            self._require_features(), self.mean, self._require_labels(), offsets, weights, self.block_size
        )

    def memo(self, key: Any, compute: Callable[[], T]) -> T:
        """Cache an estimator-specific intermediate shared by several estimators."""
        if key not in self._memo:
            self._memo[key] = compute()
        return cast(T, self._memo[key])  # the value compute() gave for this key


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
