"""Split logistic-regression accuracy: the linear-probe baseline (Bolya et al., NeurIPS 2021)."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from ._base import TransferabilityEstimator
from ._registry import register
from ._stats import Statistics, resolve_stats

__all__ = ["linear_probe", "LinearProbe", "content_split"]


def content_split(
    features: NDArray[np.float64], class_indices: list[NDArray[np.intp]], train_fraction: float, seed: int
) -> NDArray[np.bool_]:
    """Boolean train mask: per class, the ``round(train_fraction * n_c)`` rows (at least one, and
    at least one left for testing) with the smallest seeded hash of their feature bytes.

    Hashing the content instead of drawing positions makes the split independent of sample
    order and of label names, yet as random as a shuffled split.
    """
    key = int(seed).to_bytes(8, "little", signed=True)
    digests = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(row.tobytes(), key=key, digest_size=8).digest(), "little")
            for row in features
        ),
        dtype=np.uint64,
        count=features.shape[0],
    )
    train = np.zeros(features.shape[0], dtype=bool)
    for rows in class_indices:
        n_train = min(max(int(round(train_fraction * rows.size)), 1), rows.size - 1)
        order = np.lexsort((rows, digests[rows]))
        train[rows[order[:n_train]]] = True
    return train


@register(
    "linear_probe",
    family="sample",
    reference="Bolya, Mittapalli & Hoffman, NeurIPS 2021 (dbolya/parc SplitLogistic)",
)
def linear_probe(
    features: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    *,
    train_fraction: float = 0.5,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-4,
    C: float = 1.0,  # noqa: N803 - sklearn's name for the inverse regularisation strength
    standardize: bool = True,
    stats: Statistics | None = None,
) -> float:
    """Held-out accuracy of a multinomial logistic regression trained on a stratified split.

    Parameters
    ----------
    features : array-like of shape (N, D), optional
    labels : array-like of shape (N,), optional
    train_fraction : float, default=0.5
        Fraction of each class used for training (at least one sample each side).
    seed : int, default=0
        Seeds the split (see :func:`content_split`).
    max_iter, tol, C : default 100, 1e-4, 1.0
        L-BFGS settings of ``sklearn.linear_model.LogisticRegression``.
    standardize : bool, default=True
        Scale each feature to zero mean and unit variance (statistics of the training split).
    stats : Statistics, optional

    Returns
    -------
    float
        Test accuracy as a fraction in [0, 1]; higher is better.

    Shape
    -----
    features (N, D), labels (N,).

    Notes
    -----
    dbolya/parc's SplitLogistic trains on the first half of the samples in their given order,
    which breaks on class-sorted data; we split each class by a seeded content hash instead,
    so the value is reproducible and independent of sample order and label names. Its solver
    settings (``max_iter=20, tol=0.1``, raw features) stop L-BFGS before the first step on
    features of small magnitude (every backbone then scores chance), so we use sklearn's
    defaults on standardised features; pass ``max_iter=20, tol=0.1, standardize=False`` for the
    reference's settings. That early stop is a scikit-learn >= 1.4 effect: since 1.4 the
    lbfgs objective is the *mean* loss (it was the sum), which makes ``tol=0.1`` n_train times
    looser; with the reference's 2021 scikit-learn, ``tol=0.1 / n_train`` reproduces it for
    three or more classes (for two, the reference fitted a two-class softmax, we a binomial
    model). Non-convergence within ``max_iter`` is not reported.

    References
    ----------
    .. [1] D. Bolya, R. Mittapalli, J. Hoffman. Scalable Diverse Model Selection for Accessible
       Transfer Learning. NeurIPS 2021.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1); got {train_fraction}")
    stats = resolve_stats(features, labels, stats)
    features_ = stats._require_features()
    labels_ = stats._require_labels()
    train = content_split(features_, stats.class_indices, train_fraction, seed)
    x_train, x_test = features_[train], features_[~train]
    if standardize:
        location = x_train.mean(axis=0)
        scale = x_train.std(axis=0)
        scale[scale == 0] = 1.0
        x_train = (x_train - location) / scale
        x_test = (x_test - location) / scale
    model = LogisticRegression(C=C, max_iter=max_iter, tol=tol, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        model.fit(x_train, labels_[train])
    return float(np.mean(model.predict(x_test) == labels_[~train]))


class LinearProbe(TransferabilityEstimator):
    """Estimator wrapper of :func:`linear_probe`."""

    _estimator_name = "linear_probe"

    def __init__(
        self,
        *,
        train_fraction: float = 0.5,
        seed: int = 0,
        max_iter: int = 100,
        tol: float = 1e-4,
        C: float = 1.0,  # noqa: N803
        standardize: bool = True,
    ) -> None:
        self.train_fraction = train_fraction
        self.seed = seed
        self.max_iter = max_iter
        self.tol = tol
        self.C = C
        self.standardize = standardize
