"""Slow, deliberately naive reference implementations used by the golden tests.

Everything here is written straight from the definitions in the project brief, with explicit
Python loops where that makes the formula easier to check by eye. Nothing is optimised and
nothing is shared with the ``estimators`` package. All arithmetic is float64.

Estimators covered: leep, nce, knn (leave-one-out k-NN accuracy) and class_means
(leave-one-out class-mean classifier: accuracy and temperature-optimised log-likelihood).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp


def relabel(labels) -> tuple[np.ndarray, int]:
    """Map arbitrary hashable, sortable labels (ints or strings) to 0..C-1 in sorted order."""
    values = np.asarray(labels).tolist()
    classes = sorted(set(values))
    index = {c: k for k, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int64), len(classes)


# --------------------------------------------------------------------------------------------
# LEEP  (Nguyen et al., ICML 2020)
# --------------------------------------------------------------------------------------------
def leep(source_probs, labels) -> float:
    theta = np.asarray(source_probs, dtype=np.float64)
    y, n_classes = relabel(labels)
    n, n_source = theta.shape

    # Empirical joint P(y, z) = (1/N) sum_i theta_i(z) 1[y_i = y]
    joint = [[0.0] * n_source for _ in range(n_classes)]
    for i in range(n):
        for z in range(n_source):
            joint[y[i]][z] += theta[i, z] / n

    # Marginal P(z); source columns with exactly zero total mass are dropped.
    p_z = [math.fsum(joint[c][z] for c in range(n_classes)) for z in range(n_source)]
    kept = [z for z in range(n_source) if p_z[z] != 0.0]

    # Conditional P(y | z) = P(y, z) / P(z)
    cond = {(c, z): joint[c][z] / p_z[z] for c in range(n_classes) for z in kept}

    # EEP for each sample: sum_z P(y_i | z) theta_i(z)
    logs = []
    for i in range(n):
        eep = math.fsum(cond[(int(y[i]), z)] * theta[i, z] for z in kept)
        logs.append(math.log(eep))
    return math.fsum(logs) / n


# --------------------------------------------------------------------------------------------
# NCE  (Tran et al., ICCV 2019) -- TLlib convention: hard source labels z_i = argmax theta_i
# --------------------------------------------------------------------------------------------
def nce(source_probs, labels) -> float:
    theta = np.asarray(source_probs, dtype=np.float64)
    y, _ = relabel(labels)
    n = theta.shape[0]
    z = [int(np.argmax(theta[i])) for i in range(n)]  # first maximum on exact ties

    pair_counts = Counter(zip(y.tolist(), z, strict=True))
    z_counts = Counter(z)
    terms = []
    for (_, zz), count in pair_counts.items():
        p_yz = count / n
        p_z = z_counts[zz] / n
        terms.append(p_yz * math.log(p_yz / p_z))
    return math.fsum(terms)


# --------------------------------------------------------------------------------------------
# k-NN leave-one-out accuracy
# --------------------------------------------------------------------------------------------
def knn_predictions(features, labels, k: int = 1) -> np.ndarray:
    """Leave-one-out k-NN predictions (as relabelled 0..C-1 ints).

    Euclidean distance; the query sample itself is excluded; equidistant neighbours are ordered
    by index (lowest first). Majority vote over the k nearest; a tie in the vote goes to the
    tied label that occurs first in the nearest-first neighbour list (for a tie that includes
    the nearest neighbour's label this is exactly "the nearest neighbour's label").
    """
    x = np.asarray(features, dtype=np.float64)
    y, _ = relabel(labels)
    n = x.shape[0]
    preds = np.empty(n, dtype=np.int64)
    idx = np.arange(n)
    for i in range(n):
        sq_dist = np.sum((x - x[i]) ** 2, axis=1)  # squared Euclidean to every sample
        order = [int(j) for j in np.lexsort((idx, sq_dist)) if j != i][:k]
        votes = Counter(int(y[j]) for j in order)
        top = max(votes.values())
        tied = {lab for lab, v in votes.items() if v == top}
        preds[i] = next(int(y[j]) for j in order if int(y[j]) in tied)
    return preds


def knn(features, labels, k: int = 1) -> float:
    y, _ = relabel(labels)
    preds = knn_predictions(features, labels, k=k)
    correct = sum(1 for p, t in zip(preds.tolist(), y.tolist(), strict=True) if p == t)
    return correct / len(y)


# --------------------------------------------------------------------------------------------
# Class means (Seddik & Tamaazousti, AAAI 2022), leave-one-out
# --------------------------------------------------------------------------------------------
def class_means_loo_logits(features, labels) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out logits z_c(x_i) = <mu_c' - m', x_i - m'> for every sample and class.

    For sample i, the mean of its own class is recomputed from scratch without x_i, the
    centre m' is the mean of the (modified) class means, and all C logits use those.
    Returns (Z of shape (N, C), relabelled y).
    """
    x = np.asarray(features, dtype=np.float64)
    y, n_classes = relabel(labels)
    n = x.shape[0]
    logits = np.empty((n, n_classes))
    for i in range(n):
        means = []
        for c in range(n_classes):
            members = y == c
            members[i] = False  # leave sample i out (only matters for its own class)
            means.append(np.mean(x[members], axis=0))
        means = np.array(means)
        centre = np.mean(means, axis=0)
        weights = means - centre
        logits[i] = weights @ (x[i] - centre)
    return logits, y


def class_means_accuracy(features, labels) -> float:
    logits, y = class_means_loo_logits(features, labels)
    correct = sum(1 for i in range(len(y)) if int(np.argmax(logits[i])) == int(y[i]))
    return correct / len(y)


def class_means_loglik_at(logits: np.ndarray, y: np.ndarray, kappa: float) -> float:
    """Mean over samples of log softmax(kappa * z_i)[y_i]."""
    scaled = kappa * logits
    per_sample = scaled[np.arange(len(y)), y] - logsumexp(scaled, axis=1)
    return float(np.mean(per_sample))


def class_means_loglik(features, labels) -> tuple[float, float, np.ndarray, np.ndarray]:
    """max_{kappa >= 0} of the mean log-softmax likelihood of the LOO logits.

    Returns (value, kappa_star, logits, y). The objective is concave in kappa; we search on
    u = log(kappa * s) (s = a scale of the logits) with a coarse grid followed by bounded Brent.
    Raises if every LOO margin is positive (the supremum is then 0 at kappa -> inf).
    """
    logits, y = class_means_loo_logits(features, labels)
    n, n_classes = logits.shape
    rows = np.arange(n)

    # Derivative of the objective at kappa = 0: mean_i (z_i[y_i] - mean_c z_i[c]).
    slope0 = float(np.mean(logits[rows, y] - logits.mean(axis=1)))
    if slope0 <= 0.0:
        return -math.log(n_classes), 0.0, logits, y

    others = logits.copy()
    others[rows, y] = -np.inf
    if np.all(logits[rows, y] > others.max(axis=1)):
        raise ValueError("LOO-separable data: loglik supremum is at kappa -> infinity")

    scale = float(np.std(logits)) or 1.0

    def neg(u: float) -> float:
        return -class_means_loglik_at(logits, y, math.exp(u) / scale)

    grid = np.linspace(-15.0, 15.0, 601)
    best = float(grid[int(np.argmin([neg(u) for u in grid]))])
    res = minimize_scalar(neg, bounds=(best - 0.1, best + 0.1), method="bounded", options={"xatol": 1e-12})
    kappa = math.exp(res.x) / scale
    return class_means_loglik_at(logits, y, kappa), kappa, logits, y
