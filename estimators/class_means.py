r"""The class-mean softmax score (Seddik & Tamaazousti, AAAI 2022).

Seddik & Tamaazousti show that, for concentrated representations (e.g. bounded activations)
in the large-dimensional regime, the weight vectors of a trained softmax layer converge to the
*centred class-wise means* of the representations (their AISTATS 2021 analysis makes the
softmax weights deterministic functions of the class means and covariances). A candidate
backbone can then be scored without training its last layer: set the weights to the centred
class means and measure how well that softmax classifies the target data.

Definition used here. With class means :math:`\mu_c` and their average
:math:`\bar\mu = \frac1C\sum_c \mu_c` (equal to the global mean for balanced classes),

.. math::  w_c = \mu_c - \bar\mu, \qquad z_c(x) = \langle w_c,\, x - \bar\mu \rangle,
           \qquad p(c \mid x) = \operatorname{softmax}_c(\kappa\, z(x)).

* **Accuracy** (default output): leave-one-out accuracy of :math:`\arg\max_c z_c(x_i)`,
  where for sample *i* the means are recomputed without it. It does not depend on κ.
* **Log-likelihood**: :math:`\max_{\kappa \ge 0} \frac1N \sum_i \log p(y_i \mid x_i)` with the
  same leave-one-out logits. The objective is concave in κ (log-sum-exp is convex), so the
  maximiser is the unique root of its derivative
  :math:`\frac1N\sum_i \big(z_{y_i}(x_i) - \mathbb E_{p_\kappa}[z(x_i)]\big)`, found by
  bracketing and Brent's method. If the data are perfectly separated the supremum (0) is
  approached as κ → ∞ and we report the value at the end of the bracket.

Leave-one-out in O(1) per (sample, class). Let :math:`n = n_{y_i}`, :math:`c = y_i`,
:math:`a = x_i - \bar\mu`, :math:`u_k = \mu_k - \bar\mu`. Removing :math:`x_i` changes
:math:`\mu_c` by :math:`\delta = (u_c - a)/(n-1)` and :math:`\bar\mu` by :math:`\delta / C`,
so every weight becomes :math:`u_k + [k=c]\,\delta - \delta/C` and the centred input
:math:`a - \delta/C`. Expanding and dropping the terms common to all classes (softmax and
argmax ignore them):

.. math::  z'_k = \langle u_k, a\rangle - \frac{\langle u_k,\delta\rangle}{C}
           + [k=c]\Big(\langle \delta, a\rangle - \frac{\|\delta\|^2}{C}\Big),

with :math:`\langle u_k,\delta\rangle = (\langle u_k,u_c\rangle - \langle u_k,a\rangle)/(n-1)`,
:math:`\langle\delta,a\rangle = (\langle u_c,a\rangle - \|a\|^2)/(n-1)` and
:math:`\|\delta\|^2 = (\|u_c\|^2 - 2\langle u_c,a\rangle + \|a\|^2)/(n-1)^2`. Everything
comes from the N×C matrix :math:`\langle u_k, a_i\rangle`, the C×C Gram matrix of the
:math:`u_k` and the N norms :math:`\|a_i\|^2`: O(N D C) in all, like one forward pass of
the head.

Properties: invariant to translating the features, to a positive global scale (κ absorbs it),
to sample order and to label names. The score has no hyper-parameter and no training.

The input is centred by :math:`\bar\mu` like the weights. The papers' analysis takes centred
representations (class means summing to zero), where :math:`\langle w_c, x\rangle` and
:math:`\langle w_c, x - \bar\mu\rangle` coincide; on raw features (ReLU outputs have a large
common mean) the uncentred form adds the class-dependent bias :math:`-\langle w_c, \bar\mu\rangle`,
which favours classes by how their mean aligns with the global one and is not
translation-invariant, so we centre.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
from numpy.typing import ArrayLike, NDArray
from scipy.special import logsumexp

from ._base import TransferabilityEstimator
from ._linalg import softmax
from ._registry import register
from ._stats import Statistics, resolve_stats

__all__ = ["class_means", "ClassMeans", "class_means_logits", "fit_softmax_scale"]

_OUTPUTS = ("accuracy", "loglik")


def class_means_logits(stats: Statistics) -> NDArray[np.float64]:
    """Leave-one-out class-mean logits z'_ik, shape (N, C) (see the module docstring)."""

    def compute() -> NDArray[np.float64]:
        labels = stats._require_labels()
        n_classes = stats.n_classes
        center = stats.class_means.mean(axis=0)
        weights = stats.class_means - center  # u_k, (C, D)
        logits = stats.dot(weights.T) - center @ weights.T  # <u_k, a_i>, (N, C)
        weight_gram = weights @ weights.T
        shift = stats.mean - center  # a_i = (x_i - μ) + (μ - μ̄): reuse the centred norms
        sq_norm = stats.centered_sq_norms + 2.0 * stats.centered_dot(shift[:, None])[:, 0] + shift @ shift
        rows = np.arange(labels.shape[0])
        own = logits[rows, labels]  # <u_c, a>
        n_minus_1 = stats.counts[labels] - 1.0
        u_dot_delta = (weight_gram[:, labels].T - logits) / n_minus_1[:, None]
        delta_dot_a = (own - sq_norm) / n_minus_1
        delta_sq = (np.diag(weight_gram)[labels] - 2.0 * own + sq_norm) / n_minus_1**2
        loo: NDArray[np.float64] = logits - u_dot_delta / n_classes
        loo[rows, labels] += delta_dot_a - delta_sq / n_classes
        return loo

    return stats.memo("class_means_logits", compute)


def fit_softmax_scale(logits: NDArray[np.float64], labels: NDArray[np.intp]) -> tuple[float, float]:
    """The κ >= 0 maximising mean log softmax(κ z)[y], and that maximum."""
    rows = np.arange(labels.shape[0])
    true = logits[rows, labels]

    def mean_loglik(kappa: float) -> float:
        scaled = kappa * logits
        return float(np.mean(kappa * true - logsumexp(scaled, axis=1)))

    def slope(kappa: float) -> float:
        probs = softmax(kappa * logits)
        return float(np.mean(true - np.einsum("ij,ij->i", probs, logits)))

    if slope(0.0) <= 0.0:
        return 0.0, mean_loglik(0.0)
    high = 1.0 / max(float(np.std(logits)), np.finfo(float).tiny)
    for _ in range(200):
        if slope(high) < 0.0:
            kappa = scipy.optimize.brentq(slope, 0.0, high, xtol=1e-14 * high, rtol=1e-13, maxiter=500)
            return float(kappa), mean_loglik(kappa)
        high *= 2.0
    return high, mean_loglik(high)  # perfectly separated: the supremum 0 is approached as κ grows


@register(
    "class_means",
    family="class-mean",
    reference="Seddik & Tamaazousti, Neural Networks Classify through the Class-Wise Means of Their "
    "Representations, AAAI 2022",
)
def class_means(
    features: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    *,
    output: str = "accuracy",
    stats: Statistics | None = None,
) -> float:
    """Class-mean softmax score: a softmax head whose weights are the centred class means.

    Parameters
    ----------
    features : array-like of shape (N, D), optional
    labels : array-like of shape (N,), optional
    output : {"accuracy", "loglik"}, default="accuracy"
        ``"accuracy"``: leave-one-out accuracy (fraction). ``"loglik"``: leave-one-out mean
        log-likelihood at the softmax scale κ that maximises it (<= 0).
    stats : Statistics, optional

    Returns
    -------
    float
        Higher is better.

    Shape
    -----
    features (N, D), labels (N,); O(N D C) time.

    Notes
    -----
    See the module docstring for the derivation of the O(1) leave-one-out logits and the
    choice of κ.

    References
    ----------
    .. [1] M. E. A. Seddik, M. Tamaazousti. Neural Networks Classify through the Class-Wise
       Means of Their Representations. AAAI 2022.
    .. [2] M. E. A. Seddik, C. Louart, R. Couillet, M. Tamaazousti. The Unexpected Deterministic
       and Universal Behavior of Large Softmax Classifiers. AISTATS 2021.
    """
    if output not in _OUTPUTS:
        raise ValueError(f"unknown output {output!r}; use one of {_OUTPUTS}")
    stats = resolve_stats(features, labels, stats)
    logits = class_means_logits(stats)
    labels_ = stats._require_labels()
    if output == "accuracy":
        return float(np.mean(np.argmax(logits, axis=1) == labels_))
    return fit_softmax_scale(logits, labels_)[1]


class ClassMeans(TransferabilityEstimator):
    """Estimator wrapper of :func:`class_means`."""

    _estimator_name = "class_means"

    def __init__(self, *, output: str = "accuracy") -> None:
        self.output = output
