"""Input checks shared by every estimator: clear ValueErrors that say how to fix the input."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["check_features", "check_labels", "check_source_probs", "check_targets"]

MIN_SAMPLES_PER_CLASS = 2


def _show(values: Any, limit: int = 5) -> str:
    values = list(values)
    head = ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in values[:limit])
    return head + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def check_features(features: ArrayLike, *, name: str = "features") -> NDArray[np.float64]:
    """Return ``features`` as a finite, C-contiguous float64 array of shape (N, D)."""
    if features is None:
        raise ValueError(f"{name} is missing: pass an array of shape (n_samples, n_features)")
    array = np.asarray(features)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name} must be numeric; got dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise ValueError(f"{name} must be real-valued; got dtype {array.dtype}")
    if array.ndim != 2:
        hint = " (use features.reshape(-1, 1) for a single feature)" if array.ndim == 1 else ""
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_samples, n_features); got shape {array.shape}{hint}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{name} is empty (shape {array.shape}); extract features for at least "
            f"{MIN_SAMPLES_PER_CLASS} samples of each of at least 2 classes"
        )
    array = np.ascontiguousarray(array, dtype=np.float64)
    finite = np.isfinite(array)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise ValueError(
            f"{name} contain {int((~finite).sum())} NaN or infinite values in rows [{_show(bad_rows)}]; "
            "drop or re-extract those samples (NaN/inf usually means an overflow in half precision)"
        )
    return array


def check_labels(labels: ArrayLike, n_samples: int | None = None) -> tuple[NDArray[np.intp], NDArray[Any]]:
    """Relabel class labels to 0..C-1 (sorted unique order); return (codes, classes).

    Raises when there are fewer than two classes or a class has fewer than
    ``MIN_SAMPLES_PER_CLASS`` samples.
    """
    if labels is None:
        raise ValueError("labels are missing: pass one class label per feature row")
    array = np.asarray(labels)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D with one class label per sample; got shape {array.shape}")
    if n_samples is not None and array.shape[0] != n_samples:
        raise ValueError(
            f"features have {n_samples} rows but labels have {array.shape[0]} entries; "
            "pass exactly one label per feature row, in the same order"
        )
    if array.shape[0] == 0:
        raise ValueError("labels are empty; at least 2 classes with 2 samples each are needed")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError("labels contain NaN or infinite values; every sample needs a class label")
        if not np.all(array == np.round(array)):
            raise ValueError(
                "labels are non-integer floats; class labels must be integers or strings "
                "(for continuous targets use logme with regression=True)"
            )
    try:
        classes, codes = np.unique(array, return_inverse=True)
    except TypeError as err:
        raise ValueError(f"labels mix types that cannot be compared ({err}); use all ints or all strings") from None
    check_class_counts(classes, np.bincount(codes, minlength=classes.shape[0]))
    return codes.astype(np.intp, copy=False), classes


def check_class_counts(classes: NDArray[Any], counts: NDArray[Any]) -> None:
    """At least 2 classes, each with at least :data:`MIN_SAMPLES_PER_CLASS` samples; else a ValueError naming them."""
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


def check_source_probs(source_probs: ArrayLike, n_samples: int) -> NDArray[np.float64]:
    """Return the source head's softmax outputs (N, C_s) as float64, checking they are probabilities."""
    array = check_features(source_probs, name="source_probs")
    if array.shape[0] != n_samples:
        raise ValueError(
            f"source_probs have {array.shape[0]} rows but there are {n_samples} samples; "
            "pass the source head's softmax output for every sample, in the same order"
        )
    row_sums = array.sum(axis=1)
    if (array < -1e-6).any() or not np.allclose(row_sums, 1.0, atol=1e-3):
        raise ValueError(
            "source_probs must be probabilities (non-negative rows that sum to 1); got row sums in "
            f"[{row_sums.min():.4g}, {row_sums.max():.4g}]. If you have logits, pass "
            "scipy.special.softmax(logits, axis=1)"
        )
    return np.clip(array, 0.0, None)


def check_targets(targets: ArrayLike | None, n_samples: int) -> NDArray[np.float64]:
    """Regression targets (N,) or (N, K) as a finite float64 (N, K) array."""
    if targets is None:
        raise ValueError("regression targets are missing: pass an array of shape (n_samples,) or (n_samples, k)")
    array = np.asarray(targets, dtype=np.float64)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise ValueError(f"regression targets must have shape (n_samples,) or (n_samples, k); got {array.shape}")
    if array.shape[0] != n_samples:
        raise ValueError(
            f"features have {n_samples} rows but targets have {array.shape[0]}; pass one target row per sample"
        )
    if not np.isfinite(array).all():
        raise ValueError("regression targets contain NaN or infinite values; drop or impute those samples")
    return np.ascontiguousarray(array)
