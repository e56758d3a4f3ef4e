"""The moment accumulator behind :class:`~estimators.StreamingStatistics`.

:class:`MomentAccumulator` adds batches of (features, labels[, source_probs]) into the moments the
Gram-based estimators need — class counts, the global and per-class means, the centred Gram matrix,
per-class squared deviations, the fourth moment Ledoit-Wolf needs, optionally the per-class scatter
matrices, and the class x source-class joint tables — in memory independent of the number of
samples, and :meth:`~MomentAccumulator.moments` hands them over as :class:`StreamedMoments`.
It sits below both ``_stats`` (``Statistics.from_batches``) and ``_streaming``
(``StreamingStatistics.finalize``), which turn the moments into a :class:`~estimators.Statistics`.

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

References: T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a pairwise algorithm
for computing sample variances", 1979; P. Pébay, "Formulas for robust, one-pass parallel
computation of covariances and arbitrary-order statistical moments", Sandia report SAND2008-6212.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._backend import Backend, get_backend
from ._validation import _show, check_class_counts, check_features, check_source_probs

__all__ = ["MomentAccumulator", "StreamedMoments"]

_INITIAL_SLOTS = 16


@dataclass(frozen=True)
class StreamedMoments:
    """What a :class:`~estimators.Statistics` is built from when it was accumulated batch by batch.

    Attributes
    ----------
    n_samples, n_features : int
    classes : ndarray of shape (C,)
        The labels seen, in sorted order.
    has_source_probs : bool
    cached : dict
        Values of ``Statistics``' cached properties (``counts``, ``mean``, ``centered_gram``, ...).
    """

    n_samples: int
    n_features: int
    classes: NDArray[Any]
    has_source_probs: bool
    cached: dict[str, Any]


class MomentAccumulator:
    """Accumulate the moments of batches of (features, labels[, source_probs]).

    The parameters and attributes are those of :class:`~estimators.StreamingStatistics`, which
    adds ``finalize``.
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
        self._counts: NDArray[np.float64] = np.zeros(capacity)
        # per-slot arrays and the global moments have D columns from the first batch on (0 before it)
        self._class_means: NDArray[np.float64] = np.zeros((capacity, 0))  # (slots, D)
        self._class_sq: NDArray[np.float64] = np.zeros((capacity, 0))  # (slots, D)
        self._class_scatters: list[Any] = []  # per slot, backend accumulators
        self._joint: NDArray[np.float64] | None = None  # (slots, C_s), with source_probs only
        self._hard_joint: NDArray[np.float64] | None = None  # (slots, C_s), with source_probs only
        # global moments about the running mean
        self._mean: NDArray[np.float64] = np.zeros(0)  # (D,)
        self._m2: Any = None  # backend scatter accumulator (D, D)
        self._r: NDArray[np.float64] = np.zeros(0)  # (D,)
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

        def widen(array: NDArray[np.float64]) -> NDArray[np.float64]:
            out = np.zeros((new,) + array.shape[1:])
            out[: array.shape[0]] = array
            return out

        self._counts = widen(self._counts)
        self._class_means = widen(self._class_means)
        self._class_sq = widen(self._class_sq)
        if self._joint is not None:
            self._joint = widen(self._joint)
        if self._hard_joint is not None:
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
    def update(self, features: ArrayLike, labels: ArrayLike, source_probs: ArrayLike | None = None) -> Self:
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
        delta = means_b - self._class_means[present]
        self._class_means[present] += delta * (n_b / n)[:, None]
        self._class_sq[present] += sq_b + delta**2 * (n_a * n_b / n)[:, None]
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
            joint, hard_joint = self._joint, self._hard_joint
            # allocated by the first batch, which had source_probs too (_check_batch: every batch or none)
            assert joint is not None and hard_joint is not None
            joint[present] += np.add.reduceat(theta[order], starts, axis=0)
            np.add.at(hard_joint, (slots, theta.argmax(axis=1)), 1.0)

    # -- merging ----------------------------------------------------------------------------------------
    def merge(self, other: MomentAccumulator) -> Self:
        """Add everything ``other`` accumulated (rows of other batches, e.g. another worker's shard) into self.

        The result equals one accumulation over self's batches followed by other's, to rounding: the same
        pairwise update as :meth:`update`, with ``other``'s moments in place of one batch's. ``other`` is left
        unchanged. Both must have the same ``class_scatter``, ``n_classes`` and feature dimension, and either
        both or neither must have seen ``source_probs``. Returns self.
        """
        if other.class_scatter != self.class_scatter or other.n_classes_hint != self.n_classes_hint:
            raise ValueError(
                "merge accumulators of the same configuration: got class_scatter "
                f"{self.class_scatter}/{other.class_scatter}, n_classes {self.n_classes_hint}/{other.n_classes_hint}"
            )
        if other.n_samples == 0 or other._dim is None:
            return self
        if self._dim is None:
            self._allocate(other._dim, other._n_source)
        elif other._dim != self._dim:
            raise ValueError(f"cannot merge {other._dim} features per row into an accumulator of {self._dim}")
        elif self.n_samples and (other._n_source is None) != (self._n_source is None):
            raise ValueError("merge accumulators that both saw source_probs, or neither (the joint tables need both)")
        elif other._n_source != self._n_source:
            raise ValueError(f"cannot merge {other._n_source} source classes into {self._n_source}")
        used = np.flatnonzero(other._counts[: len(other._keys)] > 0)
        slots = self._slots(np.asarray([other._keys[i] for i in used]))
        self._merge_classes(other, used, slots)
        self._merge_global(other)
        self.n_samples += other.n_samples
        return self

    def _merge_classes(self, other: MomentAccumulator, used: NDArray[np.intp], slots: NDArray[np.intp]) -> None:
        """Per-class moments: ``other``'s class ``used[j]`` goes into self's slot ``slots[j]``."""
        n_a = self._counts[slots]
        n_b = other._counts[used]
        n = n_a + n_b
        delta = other._class_means[used] - self._class_means[slots]
        self._class_means[slots] += delta * (n_b / n)[:, None]
        self._class_sq[slots] += other._class_sq[used] + delta**2 * (n_a * n_b / n)[:, None]
        self._counts[slots] = n
        if self.class_scatter:
            while len(self._class_scatters) < self._counts.shape[0]:
                self._class_scatters.append(None)
            for j, (source, slot) in enumerate(zip(used, slots, strict=True)):
                scatter = self._class_scatters[slot]
                if scatter is None:
                    scatter = self.backend.new_scatter(int(self._dim or 0))
                part = other.backend.scatter_to_numpy(other._class_scatters[source])
                scatter = self.backend.add_scatter(scatter, part)
                if n_a[j] > 0:
                    scatter = self.backend.rank1_update(scatter, delta[j], n_a[j] * n_b[j] / n[j])
                self._class_scatters[slot] = scatter
        if other._joint is not None and other._hard_joint is not None:
            joint, hard_joint = self._joint, self._hard_joint
            assert joint is not None and hard_joint is not None  # allocated with the same n_source (merge checks)
            joint[slots] += other._joint[used]
            hard_joint[slots] += other._hard_joint[used]

    def _merge_global(self, other: MomentAccumulator) -> None:
        """The global moments about the merged mean: :meth:`_update_global` with ``other``'s moments as part B."""
        n_a, n_b = self.n_samples, other.n_samples
        n = n_a + n_b
        delta = other._mean - self._mean
        d_a = -delta * (n_b / n)  # shift of each part's mean to the merged mean
        d_b = delta * (n_a / n)
        m2a_da = self.backend.symv(self._m2, d_a)
        m2b_db = other.backend.symv(other._m2, d_b)
        da2, db2 = float(d_a @ d_a), float(d_b @ d_b)
        self._m4 = (
            self._m4 + 4.0 * float(d_a @ m2a_da) + n_a * da2**2 + 4.0 * float(self._r @ d_a) + 2.0 * self._s2 * da2
        ) + (
            other._m4 + 4.0 * float(d_b @ m2b_db) + n_b * db2**2 + 4.0 * float(other._r @ d_b) + 2.0 * other._s2 * db2
        )
        self._r = (self._r + 2.0 * m2a_da + self._s2 * d_a + n_a * da2 * d_a) + (
            other._r + 2.0 * m2b_db + other._s2 * d_b + n_b * db2 * d_b
        )
        self._s2 = self._s2 + n_a * da2 + other._s2 + n_b * db2
        self._m2 = self.backend.add_scatter(self._m2, other.backend.scatter_to_numpy(other._m2))
        if n_a:
            self._m2 = self.backend.rank1_update(self._m2, delta, n_a * n_b / n)
        self._mean = self._mean - d_a

    # -- result -----------------------------------------------------------------------------------------
    def moments(self) -> StreamedMoments:
        """The moments of everything added so far, as a streamed ``Statistics`` takes them (the stream can go on).

        Raises ValueError, as ``Statistics(features, labels)`` would, when there are fewer than
        two classes or a class has fewer than two samples.
        """
        if self.n_samples == 0 or self._dim is None:  # the first non-empty batch sets both
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
        check_class_counts(classes, counts)
        class_means = self._class_means[slots].copy()
        cached: dict[str, Any] = {
            "counts": counts,
            "mean": self._mean.copy(),
            "class_means": class_means,
            "class_sums": class_means * counts[:, None],
            "centered_gram": self.backend.scatter_to_numpy(self._m2),
            "centered_fourth_moment": float(self._m4),
            "class_sq_deviations": self._class_sq[slots].copy(),
        }
        if self.class_scatter:
            cached["class_scatters"] = np.stack([self.backend.scatter_to_numpy(self._class_scatters[s]) for s in slots])
        if self._joint is not None and self._hard_joint is not None:  # both or neither (_allocate)
            cached["source_joint"] = self._joint[slots].copy()
            cached["hard_source_joint"] = self._hard_joint[slots].copy()
        return StreamedMoments(
            n_samples=self.n_samples,
            n_features=int(self._dim),
            classes=classes,
            has_source_probs=self._n_source is not None,
            cached=cached,
        )
