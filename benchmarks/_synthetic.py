"""The synthetic estimator problem the speed scripts share (``speed_estimators.py``, ``gpu_check.py``)."""

from __future__ import annotations

import numpy as np

#: The eight estimators that share one ``Statistics`` (Gram matrix and eigendecomposition) in the speed runs.
SUITE = ("logme", "h_score", "shrinkage_h_score", "gbc", "transrate", "sfda", "class_means", "lda")


def make_features(n: int, d: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ReLU-like float32 features with a class structure (what a CNN's pooled output looks like)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % c
    centers = rng.normal(size=(c, d)).astype(np.float32)
    features = rng.normal(size=(n, d)).astype(np.float32)
    features += 0.7 * centers[labels]
    np.maximum(features, 0.0, out=features)
    return features, labels
