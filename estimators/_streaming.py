"""Statistics accumulated batch by batch, in memory independent of the number of samples.

:class:`StreamingStatistics` keeps the moments the Gram-based estimators need — class counts,
the global and per-class means, the centred Gram matrix, per-class squared deviations, the
fourth moment Ledoit-Wolf needs, optionally the per-class scatter matrices, and the class x
source-class joint tables — and :meth:`~StreamingStatistics.finalize` turns them into a
:class:`~estimators.Statistics` that those estimators read exactly as they read an in-memory one.

The accumulation itself (and its numerics: pairwise merges of moments about the running mean)
lives in :mod:`estimators._moments`, below both this module and ``_stats``.

Which estimators run on streamed statistics. The ones computed from these moments: ``logme``
(classification), ``h_score``, ``shrinkage_h_score``, ``nce``, ``gbc`` without PCA (``pca_dim``
None or >= D) and, with ``class_scatter=True``, ``transrate`` and ``gbc`` with PCA (exact: the
per-class variances along the principal axes are ``wᵀ S_c w``). The ones whose value is a mean
over samples of a non-linear per-sample quantity cannot be computed from moments in one pass:
``lda`` and ``sfda`` (softmax posteriors), ``class_means`` (leave-one-out argmax), ``leep``
(a log per sample), ``knn``, ``linear_probe`` and LogME regression; they raise
:class:`~estimators.SamplesRequiredError`.
"""

from __future__ import annotations

from ._moments import MomentAccumulator
from ._stats import DEFAULT_BLOCK_SIZE, Statistics

__all__ = ["StreamingStatistics"]


class StreamingStatistics(MomentAccumulator):
    """Accumulate :class:`~estimators.Statistics` from batches of (features, labels[, source_probs]).

    Parameters
    ----------
    n_classes : int, optional
        When given, labels must be integers in ``0..n_classes-1`` (the per-class arrays are
        allocated once). None: any labels (ints or strings), classes are added as they appear.
        Either way the finalized classes are the labels seen, in sorted order, as in memory.
    class_scatter : bool, default=False
        Also keep each class's D x D scatter matrix (C·D² floats: 32 MiB per class at D = 2048),
        which ``transrate`` and ``gbc`` with PCA need.
    backend : {"numpy", "torch"}, optional
        Where the Gram accumulation and, after :meth:`finalize`, the eigendecompositions run.
    device : str, optional
        torch device.

    Attributes
    ----------
    n_samples : int
        Rows added so far.

    Notes
    -----
    Memory: O(D² + C·D) floats (plus C·D² with ``class_scatter``), independent of the number
    of samples; one batch (float64 copy and its centred copy) on top while it is added. Time:
    one ``syrk`` per batch, as for in-memory statistics (twice with ``class_scatter``).
    The finalized values equal those of ``Statistics(all_features, all_labels)`` to rounding.

    Examples
    --------
    >>> import numpy as np
    >>> from estimators import Statistics, StreamingStatistics, score
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 40)
    >>> F = rng.normal(size=(120, 8)) + y[:, None]
    >>> stream = StreamingStatistics()
    >>> for start in range(0, 120, 32):
    ...     _ = stream.update(F[start:start + 32], y[start:start + 32])
    >>> streamed = stream.finalize()
    >>> bool(np.isclose(score("logme", stats=streamed), score("logme", F, y), rtol=1e-10))
    True
    """

    def finalize(self, *, block_size: int = DEFAULT_BLOCK_SIZE) -> Statistics:
        """A :class:`~estimators.Statistics` of everything added so far (the stream can go on).

        Raises ValueError, as ``Statistics(features, labels)`` would, when there are fewer than
        two classes or a class has fewer than two samples.
        """
        return Statistics._from_moments(self.moments(), block_size=block_size, backend=self.backend)
