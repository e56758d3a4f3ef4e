"""ETran's energy score (Gholami, Akbari, Wang, Kamranian & Zhang, ICCV 2023).

ETran = 0.15 · minmax(energy) + 0.85 · minmax(LDA score), the min-max taken across the
candidate backbones. This module provides the energy part, which is pool-free on its own; we do
not offer the combination. The paper's LDA part is a shrinkage LDA posterior such as
:func:`estimators.lda`, but the released ``LDA_Score`` takes ``np.linalg.eigh`` of the
non-symmetric ``inv(S_w) S_b``, which returns an orthonormal basis of the whole space, so its
projection is the identity and its "LDA" is a softmax of dot products with the class means (no
whitening, not translation invariant): it differs from :func:`estimators.lda` by several percent
on raw features and by far more on rescaled ones, which is why we do not present it as ETran's.
"""

from __future__ import annotations

import numpy as np
import scipy.special
from numpy.typing import ArrayLike

from ._base import TransferabilityEstimator
from ._registry import register
from ._stats import Statistics, resolve_stats

__all__ = ["etran_energy", "ETranEnergy"]


@register(
    "etran_energy",
    family="moment",
    reference="Gholami et al., ETran: Energy-Based Transferability Estimation, ICCV 2023 "
    "(mgholamikn/ETran metrics.py Energy_Score)",
)
def etran_energy(
    features: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    *,
    percent: float = 0.5,
    stats: Statistics | None = None,
) -> float:
    """ETran energy: mean free energy ``logsumexp(f_i)`` of the lowest-energy ``percent`` % of the samples.

    The energy of a sample is ``E(f) = log Σ_d exp(f_d)`` over its feature vector; samples are
    sorted by energy and the ``⌊int(10·percent) · N / 1000⌋`` lowest are averaged (0.5 % by
    default: 1 sample for N = 300, 7 for N = 1500).

    Parameters
    ----------
    features : array-like of shape (N, D), optional
    labels : array-like of shape (N,), optional
        Not used by the score (validated when given).
    percent : float, default=0.5
        Percentage of samples kept, in steps of 0.1 % as the official ``int(percent * 10)``.
    stats : Statistics, optional

    Returns
    -------
    float
        Higher is better (ETran ranks by it in decreasing order). Depends on the feature scale
        and dimension.

    Shape
    -----
    features (N, D) -> energies (N,).

    Notes
    -----
    Follows the released classification code: ``Energy_Score(X_features, 0.5, 'bot')`` applies
    ``torch.logsumexp`` to the penultimate *features* (not to logits) and averages the bottom
    tail. We compute in float64 (the official code in the features' dtype, float32). Deliberate
    deviation: below N = 200 the official count ``5 N // 1000`` is 0 and its mean is NaN; we keep
    at least one sample.

    References
    ----------
    .. [1] M. Gholami, M. Akbari, X. Wang, B. Kamranian, Y. Zhang. ETran: Energy-Based
       Transferability Estimation. ICCV 2023.
    """
    if isinstance(percent, bool) or not isinstance(percent, int | float | np.integer | np.floating):
        raise ValueError(f"percent must be a number in (0, 100]; got {percent!r}")
    if not 0.1 <= percent <= 100:
        raise ValueError(f"percent must be in [0.1, 100] (a percentage of the samples, in 0.1 steps); got {percent}")
    stats = resolve_stats(features, labels, stats)
    energies = scipy.special.logsumexp(stats._require_features(), axis=1)
    kept = max(int(percent * 10) * energies.size // 1000, 1)
    return float(np.sort(energies)[:kept].mean())


class ETranEnergy(TransferabilityEstimator):
    """Estimator wrapper of :func:`etran_energy`."""

    _estimator_name = "etran_energy"

    def __init__(self, *, percent: float = 0.5) -> None:
        self.percent = percent
