"""Small dense linear-algebra helpers shared by the estimators (float64 throughout)."""

from __future__ import annotations

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

__all__ = ["softmax", "pinv_eigh_rcond", "try_cholesky", "logdet_spd"]

#: numpy.linalg.pinv's default relative cutoff used by the official H-score code.
PINV_RCOND = 1e-15
#: A Cholesky pivot below this fraction of the largest diagonal entry means "numerically
#: singular": we then fall back to an eigendecomposition so the result equals a pseudo-inverse.
CHOLESKY_PIVOT_RTOL = 1e-10


def softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise softmax with the max subtracted first."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def try_cholesky(matrix: NDArray[np.float64]) -> NDArray[np.float64] | None:
    """Lower Cholesky factor of a symmetric matrix, or None when it is not safely positive definite."""
    try:
        factor = scipy.linalg.cholesky(matrix, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    pivots = np.diag(factor) ** 2
    if pivots.min() <= CHOLESKY_PIVOT_RTOL * max(float(np.diag(matrix).max()), np.finfo(float).tiny):
        return None
    return factor


def pinv_eigh_rcond(
    eigenvalues: NDArray[np.float64], rcond: float = PINV_RCOND
) -> NDArray[np.float64]:
    """Reciprocals of the eigenvalues that ``numpy.linalg.pinv(rcond)`` keeps, zero for the others.

    For a symmetric matrix the singular values are ``|eigenvalues|``; pinv inverts the ones above
    ``rcond * max|eigenvalue|`` and keeps their sign.
    """
    magnitude = np.abs(eigenvalues)
    keep = magnitude > rcond * magnitude.max() if magnitude.size else magnitude.astype(bool)
    inverse = np.zeros_like(eigenvalues)
    inverse[keep] = 1.0 / eigenvalues[keep]
    return inverse


def logdet_spd(matrix: NDArray[np.float64]) -> float:
    """log det of a symmetric positive-definite matrix (Cholesky; LU slogdet if that fails)."""
    try:
        factor = scipy.linalg.cholesky(matrix, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        sign, value = np.linalg.slogdet(matrix)
        return float(value) if sign > 0 else float("-inf")
    return float(2.0 * np.log(np.diag(factor)).sum())
