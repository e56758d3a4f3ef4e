"""NCE: Negative Conditional Entropy (Tran, Nguyen & Hassner, ICCV 2019)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._base import TransferabilityEstimator
from ._registry import register
from ._stats import Statistics, resolve_stats

__all__ = ["nce", "NCE"]


@register(
    "nce",
    family="source-head",
    needs=("source_probs",),
    reference="Tran, Nguyen & Hassner, Transferability and Hardness of Supervised Classification Tasks, "
    "ICCV 2019 (TLlib negative_conditional_entropy)",
)
def nce(
    features: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    *,
    source_probs: ArrayLike | None = None,
    stats: Statistics | None = None,
) -> float:
    """NCE: ``-H(Y | Z)`` between target labels Y and the source head's hard predictions Z.

    ``z_i = argmax θ_i``; with empirical joint frequencies ``P(y, z)``,
    ``NCE = Σ_{y,z} P(y, z) log(P(y, z) / P(z))`` over the pairs that occur.

    Parameters
    ----------
    features : ignored
    labels : array-like of shape (N,)
    source_probs : array-like of shape (N, C_s)
        Source softmax outputs (only their argmax is used).
    stats : Statistics, optional

    Returns
    -------
    float
        ``<= 0``; higher is better (0 when Z determines Y).

    Shape
    -----
    labels (N,), source_probs (N, C_s).

    Notes
    -----
    Terms with ``P(y, z) = 0`` are dropped (their limit is 0), as TLlib and thuml's current
    NCE.py do (they mask them and add 1e-20; an older thuml version did not run). Ties in the
    argmax go to the lowest source class, as ``numpy.argmax``.

    References
    ----------
    .. [1] A. T. Tran, C. V. Nguyen, T. Hassner. Transferability and Hardness of Supervised
       Classification Tasks. ICCV 2019.
    """
    stats = resolve_stats(None, labels, stats, source_probs=source_probs)
    if not stats.has_source_probs:
        raise ValueError("nce needs source_probs: the source classifier's softmax outputs (N, C_s)")
    joint = stats.hard_source_joint / stats.n_samples  # counts of (y, argmax θ): also kept by streaming
    marginal = joint.sum(axis=0)
    y, z = np.nonzero(joint)
    return float(np.sum(joint[y, z] * np.log(joint[y, z] / marginal[z])))


class NCE(TransferabilityEstimator):
    """Estimator wrapper of :func:`nce`; ``fit(features, labels, source_probs=...)``."""

    _estimator_name = "nce"

    def __init__(self) -> None:
        pass
