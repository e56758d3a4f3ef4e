"""Statistics accumulated batch by batch, in memory independent of the number of samples.

:class:`StreamingStatistics` keeps the moments the Gram-based estimators need — class counts,
the global and per-class means, the centred Gram matrix, per-class squared deviations, the
fourth moment Ledoit-Wolf needs, optionally the per-class scatter matrices, and the class x
source-class joint tables — and :meth:`~StreamingStatistics.finalize` turns them into a
:class:`~estimators.Statistics` that those estimators read exactly as they read an in-memory one.

Numerical accuracy. Accumulating the raw FᵀF and subtracting N μμᵀ at the end cancels
catastrophically when the features share a large offset (ReLU activations, or anything with
‖μ‖ ≫ the spread). Instead every batch is centred on its own mean and merged into the running
moments about the running mean with the pairwise update of Chan, Golub & LeVeque (1979)::

    n = n_A + n_B,   δ = m_B - m_A,   m = m_A + δ n_B / n,
    M2 = M2_A + M2_B + δ δᵀ n_A n_B / n.

The third and fourth moments (``r = Σ ‖y‖² y`` and ``M4 = Σ ‖y‖⁴``, y the centred rows) move to the
new mean by the binomial expansion of ``‖y + d‖⁴`` with d the shift of each part's mean
(Pébay 2008, multivariate form)::

    r'  = r + 2 M2 d + tr(M2) d + n ‖d‖² d
    M4' = M4 + 4 dᵀ M2 d + n ‖d‖⁴ + 4 rᵀ d + 2 tr(M2) ‖d‖².

Which estimators run on streamed statistics. The ones computed from these moments: ``logme``
(classification), ``h_score``, ``shrinkage_h_score``, ``nce``, ``gbc`` without PCA (``pca_dim``
None or >= D) and, with ``class_scatter=True``, ``transrate`` and ``gbc`` with PCA (exact: the
per-class variances along the principal axes are ``wᵀ S_c w``). The ones whose value is a mean
over samples of a non-linear per-sample quantity cannot be computed from moments in one pass:
``lda`` and ``sfda`` (softmax posteriors), ``class_means`` (leave-one-out argmax), ``leep``
(a log per sample), ``knn``, ``linear_probe`` and LogME regression; they raise
:class:`~estimators.SamplesRequiredError`.

References: T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a pairwise algorithm
for computing sample variances", 1979; P. Pébay, "Formulas for robust, one-pass parallel
computation of covariances and arbitrary-order statistical moments", Sandia report SAND2008-6212.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._backend import Backend, get_backend
from ._stats import DEFAULT_BLOCK_SIZE, Statistics
from ._validation import MIN_SAMPLES_PER_CLASS, _show, check_features, check_source_probs

__all__ = ["StreamingStatistics"]

_INITIAL_SLOTS = 16


class StreamingStatistics:
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

    def __init__(
        self,
        n_classes: int | None = None,
        *,
        class_scatter: bool = False,
        backend: str | Backend | None = None,
        device: str | None = None,
    ) -> None:
        if n_classes is not None and (isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 1):
            raise ValueError(f"n_classes must be a positive integer or None; got {n_classes!r}")
        self.n_classes_hint = None if n_classes is None else int(n_classes)
        self.class_scatter = bool(class_scatter)
        self._backend_name = backend
        self._device = device
        self.backend: Backend = get_backend(backend, device)
        self.n_samples = 0
        self._dim: int | None = None
        self._n_source: int | None = None
        # class slots: index -> label (dynamic) or the label itself (n_classes given)
        self._slot_of: dict[Any, int] = {}
        self._keys: list[Any] = []
        capacity = self.n_classes_hint or _INITIAL_SLOTS
        self._counts = np.zeros(capacity)
        self._class_means: NDArray[np.float64] | None = None  # (slots, D)
        self._class_sq: NDArray[np.float64] | None = None  # (slots, D)
        self._class_scatters: list[Any] = []  # per slot, backend accumulators
        self._joint: NDArray[np.float64] | None = None  # (slots, C_s)
        self._hard_joint: NDArray[np.float64] | None = None
        # global moments about the running mean
        self._mean: NDArray[np.float64] | None = None
        self._m2: Any = None
        self._r: NDArray[np.float64] | None = None
        self._m4 = 0.0
        self._s2 = 0.0
        if self.n_classes_hint is not None:
            self._keys = list(range(self.n_classes_hint))
            self._slot_of = {k: k for k in self._keys}

    # -- input checks -----------------------------------------------------------------------------
    def _check_batch(
        self, features: ArrayLike, labels: ArrayLike, source_probs: ArrayLike | None
    ) -> tuple[NDArray[np.float64], NDArray[Any], NDArray[np.float64] | None] | None:
        raw = np.asarray(features)
        y = np.asarray(labels)
        if y.ndim == 2 and 1 in y.shape:
            y = y.reshape(-1)
        if y.ndim != 1:
            raise ValueError(f"labels must be 1-D with one class label per sample; got shape {y.shape}")
        if raw.ndim == 2 and raw.shape[0] == 0 and y.shape[0] == 0:
            return None  # an empty batch (every image of it failed to decode, say)
        x = check_features(raw)
        if y.shape[0] != x.shape[0]:
            raise ValueError(
                f"this batch has {x.shape[0]} feature rows but {y.shape[0]} labels; pass exactly one label per "
                "feature row, in the same order"
            )
        if self._dim is not None and x.shape[1] != self._dim:
            raise ValueError(f"this batch has {x.shape[1]} features per row; earlier batches had {self._dim}")
        if y.dtype.kind == "f":
            if not np.isfinite(y).all():
                raise ValueError("labels contain NaN or infinite values; every sample needs a class label")
            if not np.all(y == np.round(y)):
                raise ValueError("labels are non-integer floats; class labels must be integers or strings")
        if y.dtype == object or y.dtype.kind not in "iufUSb":
            raise ValueError(f"labels must be integers or strings; got dtype {y.dtype}")
        theta = None
        if source_probs is not None:
            theta = check_source_probs(source_probs, x.shape[0])
            if self._n_source is not None and theta.shape[1] != self._n_source:
                raise ValueError(
                    f"this batch has source_probs with {theta.shape[1]} source classes; earlier batches had "
                    f"{self._n_source}"
                )
        if self.n_samples and (theta is None) != (self._n_source is None):
            raise ValueError("pass source_probs with every batch or with none (the joint tables need every sample)")
        return x, y, theta

    def _slots(self, labels: NDArray[Any]) -> NDArray[np.intp]:
        """Class slot of every label; new labels get new slots."""
        if self.n_classes_hint is not None:
            if labels.dtype.kind not in "iuf" or labels.dtype.kind == "b":
                raise ValueError(f"with n_classes={self.n_classes_hint} labels must be integers; got {labels.dtype}")
            codes = labels.astype(np.intp)
            bad = (codes < 0) | (codes >= self.n_classes_hint)
            if bad.any():
                raise ValueError(
                    f"labels [{_show(np.unique(labels[bad]))}] are outside 0..{self.n_classes_hint - 1} "
                    f"(n_classes={self.n_classes_hint}); pass n_classes=None for arbitrary labels"
                )
            return codes
        values, inverse = np.unique(labels, return_inverse=True)
        slots = np.empty(values.shape[0], dtype=np.intp)
        for j, value in enumerate(values.tolist()):
            slot = self._slot_of.get(value)
            if slot is None:
                slot = len(self._keys)
                self._slot_of[value] = slot
                self._keys.append(value)
            slots[j] = slot
        self._grow(len(self._keys))
        return slots[inverse.reshape(-1)]

    def _grow(self, needed: int) -> None:
        capacity = self._counts.shape[0]
        if needed <= capacity:
            return
        new = max(needed, 2 * capacity)

        def widen(array: NDArray[np.float64] | None) -> NDArray[np.float64] | None:
            if array is None:
                return None
            out = np.zeros((new,) + array.shape[1:])
            out[: array.shape[0]] = array
            return out

        self._counts = widen(self._counts)  # type: ignore[assignment]
        self._class_means = widen(self._class_means)
        self._class_sq = widen(self._class_sq)
        self._joint = widen(self._joint)
        self._hard_joint = widen(self._hard_joint)

    def _allocate(self, dim: int, n_source: int | None) -> None:
        capacity = self._counts.shape[0]
        self._dim = dim
        self._n_source = n_source
        self._class_means = np.zeros((capacity, dim))
        self._class_sq = np.zeros((capacity, dim))
        self._m2 = self.backend.new_scatter(dim)
        self._r = np.zeros(dim)
        self._mean = np.zeros(dim)
        if n_source is not None:
            self._joint = np.zeros((capacity, n_source))
            self._hard_joint = np.zeros((capacity, n_source))

    # -- accumulation ---------------------------------------------------------------------------------
    def update(
        self, features: ArrayLike, labels: ArrayLike, source_probs: ArrayLike | None = None
    ) -> StreamingStatistics:
        """Add one batch: features (B, D), labels (B,), optionally source softmax outputs (B, C_s).

        Returns self. The batch may be of any size (one row included); empty batches are ignored.
        """
        checked = self._check_batch(features, labels, source_probs)
        if checked is None:
            return self
        x, y, theta = checked
        slots = self._slots(y)
        if self._dim is None:
            self._allocate(x.shape[1], None if theta is None else theta.shape[1])
        self._update_classes(x, slots, theta)
        self._update_global(x)
        self.n_samples += x.shape[0]
        return self

    def _update_global(self, x: NDArray[np.float64]) -> None:
        n_b = x.shape[0]
        m_b = x.mean(axis=0)
        y = x - m_b
        q = np.einsum("ij,ij->i", y, y)  # ‖y_i‖²
        r_b = y.T @ q
        m4_b = float(q @ q)
        s2_b = float(q.sum())
        n_a = self.n_samples
        if n_a == 0:
            self._mean = m_b
            self._m2 = self.backend.syrk_update(self._m2, y)
            self._r, self._m4, self._s2 = r_b, m4_b, s2_b
            return
        n = n_a + n_b
        delta = m_b - self._mean
        d_a = -delta * (n_b / n)  # shift of part A's mean to the merged mean
        d_b = delta * (n_a / n)
        m2a_da = self.backend.symv(self._m2, d_a)  # the old M2_A, before the update below
        m2b_db = y.T @ (y @ d_b)
        da2, db2 = float(d_a @ d_a), float(d_b @ d_b)
        self._m4 = (
            self._m4 + 4.0 * float(d_a @ m2a_da) + n_a * da2**2 + 4.0 * float(self._r @ d_a) + 2.0 * self._s2 * da2
        ) + (m4_b + 4.0 * float(d_b @ m2b_db) + n_b * db2**2 + 4.0 * float(r_b @ d_b) + 2.0 * s2_b * db2)
        self._r = (self._r + 2.0 * m2a_da + self._s2 * d_a + n_a * da2 * d_a) + (
            r_b + 2.0 * m2b_db + s2_b * d_b + n_b * db2 * d_b
        )
        self._s2 = self._s2 + n_a * da2 + s2_b + n_b * db2
        self._m2 = self.backend.syrk_update(self._m2, y)
        self._m2 = self.backend.rank1_update(self._m2, delta, n_a * n_b / n)
        self._mean = self._mean - d_a

    def _update_classes(
        self, x: NDArray[np.float64], slots: NDArray[np.intp], theta: NDArray[np.float64] | None
    ) -> None:
        order = np.argsort(slots, kind="stable")
        sorted_slots = slots[order]
        present, starts, n_b = np.unique(sorted_slots, return_index=True, return_counts=True)
        deviations = x[order]  # a copy: centred on each class's batch mean in place below
        means_b = np.add.reduceat(deviations, starts, axis=0) / n_b[:, None]
        sq_b = np.empty_like(means_b)
        for j, (start, count) in enumerate(zip(starts, n_b, strict=True)):
            segment = deviations[start : start + count]
            segment -= means_b[j]
            sq_b[j] = np.einsum("ij,ij->j", segment, segment)
        n_a = self._counts[present]
        n = n_a + n_b
        delta = means_b - self._class_means[present]  # type: ignore[index]
        self._class_means[present] += delta * (n_b / n)[:, None]  # type: ignore[index]
        self._class_sq[present] += sq_b + delta**2 * (n_a * n_b / n)[:, None]  # type: ignore[index]
        self._counts[present] = n
        if self.class_scatter:
            while len(self._class_scatters) < self._counts.shape[0]:
                self._class_scatters.append(None)
            for j, slot in enumerate(present):
                scatter = self._class_scatters[slot]
                if scatter is None:
                    scatter = self.backend.new_scatter(x.shape[1])
                scatter = self.backend.syrk_update(scatter, deviations[starts[j] : starts[j] + n_b[j]])
                if n_a[j] > 0:
                    scatter = self.backend.rank1_update(scatter, delta[j], n_a[j] * n_b[j] / n[j])
                self._class_scatters[slot] = scatter
        if theta is not None:
            self._joint[present] += np.add.reduceat(theta[order], starts, axis=0)  # type: ignore[index]
            np.add.at(self._hard_joint, (slots, theta.argmax(axis=1)), 1.0)  # type: ignore[arg-type]

    # -- result -----------------------------------------------------------------------------------------
    def finalize(self, *, block_size: int = DEFAULT_BLOCK_SIZE) -> Statistics:
        """A :class:`~estimators.Statistics` of everything added so far (the stream can go on).

        Raises ValueError, as ``Statistics(features, labels)`` would, when there are fewer than
        two classes or a class has fewer than two samples.
        """
        if self.n_samples == 0:
            raise ValueError("no samples were added; call update(features, labels) with at least one batch")
        used = np.flatnonzero(self._counts[: len(self._keys)] > 0)
        keys = [self._keys[i] for i in used]
        kinds = {isinstance(k, str) for k in keys}
        if len(kinds) > 1:
            raise ValueError("labels mix strings and numbers across batches; use all ints or all strings")
        classes = np.asarray(keys)
        order = np.argsort(classes, kind="stable")
        classes = classes[order]
        slots = used[order]
        counts = self._counts[slots].copy()
        if classes.shape[0] < 2:
            raise ValueError(
                f"labels contain a single class ({_show(classes)}); transferability needs at least 2 classes — "
                "add samples of other classes"
            )
        small = np.flatnonzero(counts < MIN_SAMPLES_PER_CLASS)
        if small.size:
            raise ValueError(
                f"class {_show(classes[small])} has fewer than {MIN_SAMPLES_PER_CLASS} samples; every class needs "
                f"at least {MIN_SAMPLES_PER_CLASS} (class means and within-class statistics) — add samples or drop "
                "the class"
            )
        class_means = self._class_means[slots].copy()  # type: ignore[index]
        cached: dict[str, Any] = {
            "counts": counts,
            "mean": self._mean.copy(),  # type: ignore[union-attr]
            "class_means": class_means,
            "class_sums": class_means * counts[:, None],
            "centered_gram": self.backend.scatter_to_numpy(self._m2),
            "centered_fourth_moment": float(self._m4),
            "class_sq_deviations": self._class_sq[slots].copy(),  # type: ignore[index]
        }
        if self.class_scatter:
            cached["class_scatters"] = np.stack([self.backend.scatter_to_numpy(self._class_scatters[s]) for s in slots])
        if self._joint is not None:
            cached["source_joint"] = self._joint[slots].copy()
            cached["hard_source_joint"] = self._hard_joint[slots].copy()  # type: ignore[index]
        return Statistics._from_moments(
            n_samples=self.n_samples,
            n_features=int(self._dim),  # type: ignore[arg-type]
            classes=classes,
            has_source_probs=self._n_source is not None,
            cached=cached,
            block_size=block_size,
            backend=self.backend,
        )
