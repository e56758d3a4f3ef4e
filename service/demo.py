"""A self-contained demo: score generated "backbones" of known quality with every estimator.

Until the built-in datasets and model zoo exist, the demo builds features synthetically: a
latent class structure seen through backbones of decreasing quality (less class signal, more
noise, a saturating non-linearity, different widths). The ranking each estimator induces is
compared with the designed quality order by weighted Kendall τ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.special import softmax
from scipy.stats import weightedtau

from estimators import Statistics, list_estimators, score

__all__ = ["DemoBackbone", "DemoResult", "make_demo_features", "run_demo"]


@dataclass(frozen=True)
class DemoBackbone:
    name: str
    dim: int
    signal: float  # strength of the class signal; the designed quality order
    noise: float
    source_classes: int | None  # a source head (for LEEP/NCE) when set


DEMO_BACKBONES = (
    DemoBackbone("best", 512, 0.9, 2.0, 100),
    DemoBackbone("good", 128, 0.7, 2.0, 100),
    DemoBackbone("fair", 384, 0.5, 2.0, None),
    DemoBackbone("weak", 64, 0.35, 2.0, 100),
    DemoBackbone("poor", 256, 0.2, 2.0, None),
    DemoBackbone("random", 256, 0.0, 2.0, 100),
)


@dataclass
class DemoResult:
    backbone: DemoBackbone
    scores: dict[str, float]
    seconds: float


def make_demo_features(
    backbone: DemoBackbone, labels: NDArray[np.intp], latent: NDArray[np.float64], seed: int
) -> tuple[NDArray[np.float32], NDArray[np.float64] | None]:
    """Features (N, dim) float32 and, when the backbone has a head, source probabilities."""
    rng = np.random.default_rng(seed)
    n_classes = int(labels.max()) + 1
    mixing = rng.normal(size=(latent.shape[1], backbone.dim)) / np.sqrt(latent.shape[1])
    class_directions = rng.normal(size=(n_classes, backbone.dim))
    pre = latent @ mixing + backbone.signal * class_directions[labels]
    pre += backbone.noise * rng.normal(size=pre.shape)
    features = np.maximum(np.tanh(0.5 * pre), 0.0).astype(np.float32)  # bounded, ReLU-like
    probs = None
    if backbone.source_classes:
        head = rng.normal(size=(backbone.dim, backbone.source_classes)) / np.sqrt(backbone.dim)
        head[:, : n_classes] += 0.5 * class_directions.T / np.sqrt(backbone.dim)
        probs = softmax(4.0 * features.astype(np.float64) @ head, axis=1)
    return features, probs


def run_demo(
    n_per_class: int = 60, n_classes: int = 12, seed: int = 0
) -> tuple[list[DemoResult], dict[str, float]]:
    """Score every demo backbone with every estimator; return results and τ_w per estimator."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    latent = rng.normal(size=(labels.size, 32))
    results = []
    for index, backbone in enumerate(DEMO_BACKBONES):
        features, probs = make_demo_features(backbone, labels, latent, seed + index + 1)
        start = time.perf_counter()
        stats = Statistics(features, labels, source_probs=probs)
        scores = {
            info.name: score(info.name, stats=stats)
            for info in list_estimators()
            if "source_probs" not in info.needs or probs is not None
        }
        results.append(DemoResult(backbone, scores, time.perf_counter() - start))
    quality = np.array([r.backbone.signal for r in results])
    agreement = {}
    for info in list_estimators():
        pairs = [(r.scores[info.name], q) for r, q in zip(results, quality, strict=True) if info.name in r.scores]
        if len(pairs) >= 3:
            values, truth = np.array(pairs).T
            sign = 1.0 if info.higher_is_better else -1.0
            agreement[info.name] = float(weightedtau(sign * values, truth).statistic)
    return results, agreement
