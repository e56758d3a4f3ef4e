"""Slow, independent references for nleep, parc, pactran_gauss, pactran_dirichlet, etran_energy and ncti.

Each follows its official implementation line by line (google-research stable_transfer and
pactran_metrics, dbolya/parc, mgholamikn/ETran, BUserName/NCTI), in plain numpy/scipy/sklearn/
torch on float64 inputs, without importing the ``estimators`` package. Where the official code
cannot run (or is unseeded), the comment says what the reference does instead.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats
import sklearn.decomposition
import sklearn.mixture
import sklearn.preprocessing
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis


def _encode(labels):
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    return codes.reshape(-1).astype(np.int64)


def one_hot(a):
    b = np.zeros((a.size, a.max() + 1))
    b[np.arange(a.size), a] = 1.0
    return b


# --------------------------------------------------------------------------------------------
# NLEEP: stable_transfer features_targets_utils.pca_reduction + nleep.get_nleep_score + leep.py
# (float64 throughout; the official code casts the PCA output and the posteriors to float32)
# --------------------------------------------------------------------------------------------
def ref_leep_stable_transfer(predictions, target_labels):
    num_target_classes = target_labels.max() + 1
    one_hot_encoding_t = np.eye(num_target_classes)[target_labels]
    occurrences_s_t = np.einsum("bt,bs->st", one_hot_encoding_t, predictions)
    occurrences_s = np.sum(occurrences_s_t, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        probability_t_given_s = np.where(occurrences_s > 0, occurrences_s_t / occurrences_s, 0.0)  # divide_no_nan
    target_predictions = predictions @ probability_t_given_s
    eep = np.sum(target_predictions * one_hot_encoding_t, axis=-1)
    with np.errstate(divide="ignore"):
        return float(np.mean(np.where(eep > 0, np.log(eep), -np.log(float(num_target_classes)))))


def ref_nleep(features, labels, n_components_per_class=5, pca_variance=0.8, random_state=123, float32=False):
    features = np.asarray(features, dtype=np.float64)
    target_labels = _encode(labels)
    reduced = sklearn.decomposition.PCA(n_components=pca_variance, svd_solver="full").fit_transform(features)
    if float32:  # exactly as stable_transfer: pca_reduction returns float32
        reduced = reduced.astype(np.float32)
    num_components_gmm = int((target_labels.max() + 1) * n_components_per_class)
    gmm = sklearn.mixture.GaussianMixture(n_components=num_components_gmm, random_state=random_state).fit(reduced)
    predictions = gmm.predict_proba(reduced)
    if float32:
        predictions = predictions.astype(np.float32).astype(np.float64)
    return ref_leep_stable_transfer(predictions, target_labels)


# --------------------------------------------------------------------------------------------
# PARC: dbolya/parc methods.py feature_reduce + PARC.get_parc_correlation
# (the PCA dimension is capped at N - 1 and D instead of the official N, see parc's docstring)
# --------------------------------------------------------------------------------------------
def ref_parc(features, labels, n_dims=32):
    features = np.asarray(features, dtype=np.float64)
    y = _encode(labels)
    if n_dims is not None:
        f = min(n_dims, features.shape[0] - 1, features.shape[1])
        features = sklearn.decomposition.PCA(
            n_components=f, svd_solver="randomized", random_state=1919, iterated_power=1
        ).fit_transform(features)
    num_classes = y.max() + 1
    labels2 = np.eye(num_classes)[y]
    feats1 = sklearn.preprocessing.StandardScaler().fit_transform(features)
    rdm1 = 1 - np.corrcoef(feats1)
    rdm2 = 1 - np.corrcoef(labels2)
    lt_rdm1 = rdm1[np.triu_indices(rdm1.shape[0], 1)]
    lt_rdm2 = rdm2[np.triu_indices(rdm2.shape[0], 1)]
    return float(scipy.stats.spearmanr(lt_rdm1, lt_rdm2)[0] * 100)


# --------------------------------------------------------------------------------------------
# PACTran-Gauss: pactran_metrics compute_metrics.py calculate_pac_gauss (latest version, which
# centres the features itself), seeded with np.random.seed(seed) just before the call.
# --------------------------------------------------------------------------------------------
def ref_pactran_gauss(features, labels, lda_factor=1.0, s2_factor=100.0, seed=0):
    features_np_all = np.array(features, dtype=np.float64)  # a copy: the official code centres in place
    label_np_all = _encode(labels)
    np.random.seed(seed)

    nclasses = label_np_all.max() + 1
    label_np_all = one_hot(label_np_all)  # [n, v]

    mean_feature = np.mean(features_np_all, axis=0, keepdims=True)
    features_np_all -= mean_feature  # [n,k]

    bs = features_np_all.shape[0]
    kd = features_np_all.shape[-1] * nclasses
    ldas2 = lda_factor * bs
    dinv = 1.0 / float(features_np_all.shape[-1])

    def pac_loss_fn(theta):
        theta = np.reshape(theta, [features_np_all.shape[-1] + 1, nclasses])
        w = theta[: features_np_all.shape[-1], :]
        b = theta[features_np_all.shape[-1] :, :]
        logits = np.matmul(features_np_all, w) + b
        log_qz = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
        xent = np.sum(np.sum(label_np_all * (np.log(label_np_all + 1e-10) - log_qz), axis=-1)) / bs
        loss = xent + 0.5 * np.sum(np.square(w)) / ldas2
        return loss

    def pac_grad_fn(theta):
        theta = np.reshape(theta, [features_np_all.shape[-1] + 1, nclasses])
        w = theta[: features_np_all.shape[-1], :]
        b = theta[features_np_all.shape[-1] :, :]
        logits = np.matmul(features_np_all, w) + b
        grad_f = scipy.special.softmax(logits, axis=-1)  # [n, k]
        grad_f -= label_np_all
        grad_f /= bs
        grad_w = np.matmul(features_np_all.transpose(), grad_f)  # [d, k]
        grad_w += w / ldas2
        grad_b = np.sum(grad_f, axis=0, keepdims=True)  # [1, k]
        grad = np.ravel(np.concatenate([grad_w, grad_b], axis=0))
        return grad

    def pac_grad2(theta):
        theta = np.reshape(theta, [features_np_all.shape[-1] + 1, nclasses])
        w = theta[: features_np_all.shape[-1], :]
        b = theta[features_np_all.shape[-1] :, :]
        logits = np.matmul(features_np_all, w) + b
        prob_logits = scipy.special.softmax(logits, axis=-1)  # [n, k]
        grad2_f = prob_logits - np.square(prob_logits)  # [n, k]
        xx = np.square(features_np_all)  # [n, d]
        grad2_w = np.matmul(xx.transpose(), grad2_f)  # [d, k]
        grad2_w += 1.0 / ldas2
        grad2_b = np.sum(grad2_f, axis=0, keepdims=True)  # [1, k]
        grad2 = np.ravel(np.concatenate([grad2_w, grad2_b], axis=0))
        return grad2

    kernel_shape = [features_np_all.shape[-1], nclasses]
    theta = np.random.normal(size=kernel_shape) * 0.03
    theta_1d = np.ravel(np.concatenate([theta, np.zeros([1, nclasses])], axis=0))
    theta_1d = scipy.optimize.minimize(
        pac_loss_fn, theta_1d, method="L-BFGS-B", jac=pac_grad_fn, options={"maxiter": 100}, tol=1e-6
    ).x
    pac_opt = pac_loss_fn(theta_1d)
    h = pac_grad2(theta_1d)
    sigma2_inv = np.sum(h) * ldas2 / kd + 1e-10
    s2 = s2_factor * dinv
    return float(pac_opt + 0.5 * kd / ldas2 * s2 * np.log(sigma2_inv))


# --------------------------------------------------------------------------------------------
# PACTran-Dirichlet: pactran_metrics compute_metrics.py calculate_pac_dir
# --------------------------------------------------------------------------------------------
def ref_pactran_dirichlet(prob_np_all, labels, alpha=1.0):
    prob_np_all = np.asarray(prob_np_all, dtype=np.float64)
    label_np_all = one_hot(_encode(labels))  # [n, v]
    soft_targets_sum = np.sum(label_np_all, axis=0)  # [v]
    soft_targets_sum = np.expand_dims(soft_targets_sum, axis=1)  # [v, 1]
    a0 = alpha * soft_targets_sum / np.sum(soft_targets_sum) + 1e-10

    qz = prob_np_all  # [n, d]
    log_s = np.log(prob_np_all + 1e-10)  # [n, d]
    for _ in range(10):
        aw = a0 + np.sum(np.einsum("BY,BZ->BYZ", label_np_all, qz), axis=0)
        logits_qz = (
            log_s
            + np.matmul(label_np_all, scipy.special.digamma(aw))
            - np.reshape(scipy.special.digamma(np.sum(aw, axis=0)), [1, -1])
        )
        log_qz = logits_qz - scipy.special.logsumexp(logits_qz, axis=-1, keepdims=True)
        qz = np.exp(log_qz)

    log_c0 = scipy.special.loggamma(np.sum(a0)) - np.sum(scipy.special.loggamma(a0))
    log_c = scipy.special.loggamma(np.sum(aw, axis=0)) - np.sum(scipy.special.loggamma(aw), axis=0)
    pac_dir = np.sum(log_c0 - log_c - np.sum(qz * (log_qz - log_s), axis=0))
    return float(-pac_dir / label_np_all.size)


# --------------------------------------------------------------------------------------------
# ETran energy: mgholamikn/ETran metrics.py Energy_Score(X_features, 0.5, 'bot')
# --------------------------------------------------------------------------------------------
def ref_etran_energy(features, percent=0.5):
    logits = torch.from_numpy(np.array(features, dtype=np.float64))  # a writable copy
    energy_score = torch.logsumexp(logits, dim=-1).numpy()
    chs = list(np.argsort(energy_score)[0 : int(percent * 10) * len(energy_score) // 1000])
    return float(energy_score[chs].mean())


# --------------------------------------------------------------------------------------------
# NCTI: BUserName/NCTI metrics.py NCTI_Score, with an exact PCA (the official PCA(64) picks an
# unseeded randomized solver for large inputs). Returns the official triple.
# --------------------------------------------------------------------------------------------
def ref_ncti_terms(features, labels, n_components=64):
    X = np.asarray(features, dtype=np.float64)
    y = _encode(labels)
    C = np.unique(y).shape[0]
    if n_components > min(X.shape):  # the official PCA(64) refuses; ncti then keeps N - 1 (documented)
        n_components = min(n_components, X.shape[0] - 1, X.shape[1])
    pca = sklearn.decomposition.PCA(n_components=n_components, svd_solver="full")
    X = pca.fit_transform(X, y)
    temp = max(np.exp(-pca.explained_variance_[:32].sum()), 1e-10)
    if temp == 1e-10:
        clf = LinearDiscriminantAnalysis(solver="svd")
    else:
        clf = LinearDiscriminantAnalysis(solver="eigen", shrinkage=float(temp))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        low_feat = clf.fit_transform(X, y)
    low_feat = low_feat - np.mean(low_feat, axis=0, keepdims=True)
    all_lowfeat_nuc = np.linalg.norm(low_feat, ord="nuc")
    low_pred = clf.predict_proba(X)
    sfda_score = np.sum(low_pred[np.arange(X.shape[0]), y]) / X.shape[0]
    class_pred_nuc = 0
    for c in range(C):
        c_pred = low_pred[(y == c).flatten()]
        class_pred_nuc += np.linalg.norm(c_pred, ord="nuc")
    return float(all_lowfeat_nuc), float(sfda_score), float(np.log(class_pred_nuc)), low_feat.shape[1]
