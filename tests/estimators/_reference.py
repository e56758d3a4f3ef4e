"""Slow, independent reference implementations of transferability estimators.

Written from the conventions of the official research code (thuml/LogME, TLlib,
google-research stable_transfer, TencentARC/SFDA), in plain numpy/scipy/sklearn,
with explicit loops.  These are test oracles only: clarity over speed.

Every function takes ``features`` (N, D) and ``labels`` (N,) and returns a float.
Labels are mapped to 0..C-1 through ``np.unique`` (sorted order) so any hashable
labels work; all computation is float64.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA

__all__ = [
    "ref_logme",
    "ref_logme_fixed_point",
    "ref_logme_icml",
    "ref_h_score",
    "ref_shrinkage_h_score",
    "ref_gbc",
    "ref_transrate",
    "ref_lda",
    "ref_sfda",
    "REFERENCES",
]


def _as_f64(features):
    f = np.asarray(features, dtype=np.float64)
    assert f.ndim == 2
    return f


def _encode(labels):
    """Map arbitrary labels to 0..C-1 (sorted-unique order); return (codes, C)."""
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    codes = codes.reshape(-1)
    return codes, int(codes.max()) + 1


# ---------------------------------------------------------------------------
# LogME
# ---------------------------------------------------------------------------


def _targets(labels, regression):
    """Columns y (N,) that LogME evaluates one after the other."""
    if regression:
        t = np.asarray(labels, dtype=np.float64)
        if t.ndim == 1:
            t = t[:, None]
        return [t[:, k].copy() for k in range(t.shape[1])]
    codes, n_classes = _encode(labels)
    return [(codes == c).astype(np.float64) for c in range(n_classes)]


def ref_logme_fixed_point(features, labels, regression=False):
    """LogME, fixed-point algorithm (thuml/LogME), with the D > N fix.

    The sum of log(alpha + beta * sigma_i) runs over all D eigenvalues of F^T F,
    i.e. the (D - K) zero eigenvalues contribute log(alpha) each (LogME issue #23).
    """
    f = _as_f64(features)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)  # u: (N, K), K = min(N, D)
    sigma = s**2  # the K (possibly) non-zero eigenvalues of F^T F
    k = sigma.shape[0]
    evidences = []
    for y in _targets(labels, regression):
        x = u.T @ y  # (K,)
        x2 = x**2
        res_x2 = float(y @ y) - float(x2.sum())
        alpha, beta = 1.0, 1.0
        m2 = res2 = None
        for _ in range(11):
            t = alpha / beta
            gamma = float(np.sum(sigma / (sigma + t)))
            m2 = float(np.sum(sigma * x2 / (t + sigma) ** 2))
            res2 = float(np.sum(x2 / (1.0 + sigma / t) ** 2)) + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            t_new = alpha / beta
            if abs(t_new - t) / t <= 1e-3:
                break
        # sum of log(alpha + beta * sigma_i) over ALL D eigenvalues of F^T F:
        # the K from the SVD plus (D - K) exact zeros when D > N
        sigma_all = np.concatenate([sigma, np.zeros(d - k)])
        log_det = float(np.sum(np.log(alpha + beta * sigma_all)))
        evidence = (
            d / 2.0 * np.log(alpha)
            + n / 2.0 * np.log(beta)
            - 0.5 * log_det
            - beta / 2.0 * res2
            - alpha / 2.0 * m2
            - n / 2.0 * np.log(2.0 * np.pi)
        ) / n
        evidences.append(evidence)
    return float(np.mean(evidences))


def ref_logme_icml(features, labels, regression=False):
    """LogME, ICML'21 algorithm (TLlib ``log_maximum_evidence``)."""
    f = _as_f64(features)
    n, d = f.shape
    v, s, vh = np.linalg.svd(f.T @ f, full_matrices=True)  # s has D entries
    evidences = []
    for y in _targets(labels, regression):
        alpha, beta, lam = 1.0, 1.0, 1.0
        proj = vh @ (f.T @ y)
        alpha_de = beta_de = None
        for _ in range(11):
            gamma = float(np.sum(s / (s + lam)))
            m = v @ (proj * beta / (alpha + beta * s))
            alpha_de = float(m @ m)
            alpha = gamma / (alpha_de + 1e-5)
            r = y - f @ m
            beta_de = float(r @ r)
            beta = (n - gamma) / (beta_de + 1e-5)
            new_lam = alpha / beta
            if abs(new_lam - lam) / lam < 0.01:
                break
            lam = new_lam
        evidence = (
            d / 2.0 * np.log(alpha)
            + n / 2.0 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * s))
            - beta / 2.0 * (beta_de + 1e-5)
            - alpha / 2.0 * (alpha_de + 1e-5)
            - n / 2.0 * np.log(2.0 * np.pi)
        ) / n
        evidences.append(evidence)
    return float(np.mean(evidences))


def ref_logme(features, labels, algorithm="fixed_point", regression=False):
    if algorithm == "fixed_point":
        return ref_logme_fixed_point(features, labels, regression=regression)
    if algorithm == "icml":
        return ref_logme_icml(features, labels, regression=regression)
    raise ValueError(algorithm)


# ---------------------------------------------------------------------------
# H-score and shrinkage H-score (TLlib)
# ---------------------------------------------------------------------------


def _class_mean_rows(f, codes, n_classes):
    g = np.zeros_like(f)
    for c in range(n_classes):
        idx = codes == c
        g[idx] = f[idx].mean(axis=0)
    return g


def ref_h_score(features, labels):
    f = _as_f64(features)
    codes, n_classes = _encode(labels)
    covf = np.cov(f, rowvar=False)
    g = _class_mean_rows(f, codes, n_classes)
    covg = np.cov(g, rowvar=False)
    return float(np.trace(np.linalg.pinv(covf, rcond=1e-15) @ covg))


def ref_shrinkage_h_score(features, labels):
    f = _as_f64(features)
    f = f - f.mean(axis=0, keepdims=True)
    codes, n_classes = _encode(labels)
    lw = LedoitWolf(assume_centered=False).fit(f)
    alpha = lw.shrinkage_
    covf_alpha = lw.covariance_
    g = _class_mean_rows(f, codes, n_classes)
    covg = np.cov(g, rowvar=False)
    return float(np.trace(np.linalg.pinv(covf_alpha, rcond=1e-15) @ ((1.0 - alpha) * covg)))


# ---------------------------------------------------------------------------
# GBC (google-research stable_transfer)
# ---------------------------------------------------------------------------


def _bhattacharyya(mu1, mu2, s1, s2, gaussian_type):
    if gaussian_type == "spherical":
        s1 = float(np.mean(s1))
        s2 = float(np.mean(s2))
        avg = (s1 + s2) / 2.0
        first = float(np.sum((mu1 - mu2) ** 2 / avg)) / 8.0
        second = np.log(avg) - 0.5 * np.log(s1) - 0.5 * np.log(s2)
    elif gaussian_type == "diagonal":
        avg = (s1 + s2) / 2.0
        first = float(np.sum((mu1 - mu2) ** 2 / avg)) / 8.0
        second = float(np.sum(np.log(avg)) - 0.5 * np.sum(np.log(s1)) - 0.5 * np.sum(np.log(s2)))
    else:
        raise ValueError(gaussian_type)
    return first + 0.5 * second


def ref_gbc(features, labels, gaussian_type="spherical", pca_dim=64):
    f = _as_f64(features)
    n, d = f.shape
    if pca_dim is not None and pca_dim <= d:  # the official pca_reduction also rotates at pca_dim == D
        f = PCA(n_components=min(pca_dim, n), svd_solver="full").fit_transform(f)
    codes, n_classes = _encode(labels)
    means, variances = [], []
    for c in range(n_classes):
        fc = f[codes == c]
        means.append(fc.mean(axis=0))
        variances.append(np.maximum(fc.var(axis=0, ddof=0), 1e-4))
    total = 0.0
    for c1 in range(n_classes):
        for c2 in range(n_classes):
            if c1 == c2:
                continue
            db = _bhattacharyya(means[c1], means[c2], variances[c1], variances[c2], gaussian_type)
            total += np.exp(-db)
    return float(-total)


# ---------------------------------------------------------------------------
# TransRate (TLlib)
# ---------------------------------------------------------------------------


def _coding_rate(z, eps):
    n, d = z.shape
    sign, logdet = np.linalg.slogdet(np.eye(d) + z.T @ z / (n * eps))
    assert sign > 0
    return 0.5 * logdet


def ref_transrate(features, labels, eps=1e-4):
    z = _as_f64(features)
    z = z - z.mean(axis=0, keepdims=True)
    codes, n_classes = _encode(labels)
    rz = _coding_rate(z, eps)
    rzy = 0.0
    for c in range(n_classes):
        rzy += _coding_rate(z[codes == c], eps)
    return float(rz - rzy / n_classes)


# ---------------------------------------------------------------------------
# SFDA / LDA (TencentARC/SFDA metrics.py)
# ---------------------------------------------------------------------------


def _softmax_rows(a):
    a = np.array(a, dtype=np.float64, copy=True)
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _largest_eig_power(a):
    x = a.sum(axis=1)
    y = None
    for _ in range(3):
        t = a @ x
        y = t / np.linalg.norm(t, 2)
        t = a @ y
        x = t / np.linalg.norm(t, 2)
    return float(x.T @ a @ y)


def _shrink(cov, s):
    d = cov.shape[0]
    return (1.0 - s) * cov + s * (np.trace(cov) / d) * np.eye(d)


class _SFDAFit:
    """One fit of the SFDA regularised Fisher discriminant."""

    def __init__(self, x, codes, n_classes, shrinkage=None):
        n, d = x.shape
        counts = np.array([np.sum(codes == c) for c in range(n_classes)], dtype=np.float64)
        priors = counts / n
        means = np.stack([x[codes == c].mean(axis=0) for c in range(n_classes)])
        sw = np.zeros((d, d))
        for c in range(n_classes):
            sw += priors[c] * np.atleast_2d(np.cov(x[codes == c].T, bias=1))
        if shrinkage is None:
            rho = _largest_eig_power(sw)
            shrinkage = max(np.exp(-5.0 * rho), 1e-10)
        self.shrinkage = float(shrinkage)
        st = _shrink(np.atleast_2d(np.cov(x.T, bias=1)), self.shrinkage)
        sw_shrunk = _shrink(sw, self.shrinkage)
        sb = st - sw_shrunk
        evals, evecs = scipy.linalg.eigh(sb, sw_shrunk)
        evecs = evecs[:, np.argsort(evals)[::-1]]
        self.coef = means @ evecs @ evecs.T
        self.intercept = np.array(
            [-0.5 * (means @ self.coef.T)[c, c] + np.log(priors[c]) for c in range(n_classes)]
        )

    def predict_proba(self, x):
        return _softmax_rows(x @ self.coef.T + self.intercept)


def ref_lda(features, labels, shrinkage=None):
    x = _as_f64(features)
    codes, n_classes = _encode(labels)
    prob = _SFDAFit(x, codes, n_classes, shrinkage).predict_proba(x)
    return float(np.mean([prob[i, codes[i]] for i in range(x.shape[0])]))


def ref_sfda(features, labels, shrinkage=None):
    x = _as_f64(features)
    n = x.shape[0]
    codes, n_classes = _encode(labels)
    first = _SFDAFit(x, codes, n_classes, shrinkage)
    prob = first.predict_proba(x)
    prob = _softmax_rows(prob)  # soften: softmax applied to the probabilities
    means = np.stack([x[codes == c].mean(axis=0) for c in range(n_classes)])
    outer = np.stack([(means.sum(axis=0) - means[c]) / (n_classes - 1) for c in range(n_classes)])
    mixed = x.copy()
    for i in range(n):
        c = codes[i]
        a = prob[i, c]
        mixed[i] = a * x[i] + (1.0 - a) * outer[c]
    second = _SFDAFit(mixed, codes, n_classes, first.shrinkage)  # same shrinkage
    prob2 = second.predict_proba(mixed)
    return float(np.mean([prob2[i, codes[i]] for i in range(n)]))


REFERENCES = {
    "logme": ref_logme,
    "h_score": ref_h_score,
    "shrinkage_h_score": ref_shrinkage_h_score,
    "gbc": ref_gbc,
    "transrate": ref_transrate,
    "sfda": ref_sfda,
    "lda": ref_lda,
}
