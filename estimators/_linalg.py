"""Small dense linear-algebra helpers shared by the estimators (float64 throughout)."""

from __future__ import annotations

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

__all__ = ["softmax", "pinv_eigh_rcond", "logdet_spd", "solve_spd", "symmetrize"]

#: numpy.linalg.pinv's default relative cutoff used by the official H-score code.
PINV_RCOND = 1e-15


def softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise softmax with the max subtracted first."""
    shifted: NDArray[np.float64] = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def pinv_eigh_rcond(eigenvalues: NDArray[np.float64], rcond: float = PINV_RCOND) -> NDArray[np.float64]:
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


def solve_spd(matrix: NDArray[np.float64], rhs: NDArray[np.float64]) -> NDArray[np.float64]:
    """``matrix⁻¹ rhs`` for a symmetric positive-definite matrix (Cholesky; eigh if not numerically PD).

    The eigh fallback is ``V diag(1/w) Vᵀ rhs``, what SFDA's official ``V Vᵀ`` amounts to.
    """
    try:
        factor = scipy.linalg.cho_factor(matrix, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(matrix)
        solution: NDArray[np.float64] = vectors @ ((vectors.T @ rhs) / values[:, None])
        return solution
    return scipy.linalg.cho_solve(factor, rhs, check_finite=False)


def symmetrize(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """``(M + Mᵀ) / 2`` in place (removes the rounding asymmetry of accumulated products)."""
    matrix += matrix.T
    matrix *= 0.5
    return matrix
