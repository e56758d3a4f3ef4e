"""ridge_probe: exact leave-one-out accuracy of a ridge classifier, checked against N refits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import RidgeClassifier

from estimators import RidgeProbe, SamplesRequiredError, Statistics, StreamingStatistics, ridge_probe
from estimators.ridge_probe import DEFAULT_RIDGE_GRID


def _data(n_classes: int, n_per_class: int, dim: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = rng.normal(size=(labels.size, dim)) * rng.uniform(0.1, 10, size=dim)
    return features + spread * rng.normal(size=(n_classes, dim))[labels], labels


def _refit_loo(features: np.ndarray, labels: np.ndarray, grid, standardize: bool) -> float:
    """The definition, literally: for every strength, refit without each sample and predict it."""
    x = features - features.mean(axis=0)
    if standardize:
        scale = features.std(axis=0)
        x = x / np.where(scale == 0, 1.0, scale)
    mean_sq_norm = float((x**2).sum()) / x.shape[0]
    best = 0.0
    for strength in grid:
        model = RidgeClassifier(alpha=strength * mean_sq_norm)
        hits = 0
        for i in range(x.shape[0]):
            keep = np.arange(x.shape[0]) != i
            hits += int(model.fit(x[keep], labels[keep]).predict(x[i : i + 1])[0] == labels[i])
        best = max(best, hits / x.shape[0])
    return best


@pytest.mark.parametrize(
    ("n_classes", "n_per_class", "dim", "standardize"),
    [(2, 12, 5, True), (3, 10, 40, True), (4, 6, 7, False), (2, 15, 60, False)],
)
def test_equals_refitting_without_each_sample(n_classes, n_per_class, dim, standardize):
    grid = (0.01, 0.3, 10.0)
    for seed in range(3):
        features, labels = _data(n_classes, n_per_class, dim, seed, spread=0.6)
        assert ridge_probe(features, labels, grid=grid, standardize=standardize) == pytest.approx(
            _refit_loo(features, labels, grid, standardize), abs=1e-12
        )


def test_default_grid_is_thirteen_log_spaced_strengths():
    assert len(DEFAULT_RIDGE_GRID) == 13
    assert DEFAULT_RIDGE_GRID[0] == pytest.approx(1e-3) and DEFAULT_RIDGE_GRID[-1] == pytest.approx(1e3)
    features, labels = _data(3, 8, 6, 0, spread=0.5)
    assert ridge_probe(features, labels) == pytest.approx(_refit_loo(features, labels, DEFAULT_RIDGE_GRID, True))


def test_order_label_names_and_feature_scale_do_not_matter():
    features, labels = _data(4, 10, 30, 1, spread=0.5)
    value = ridge_probe(features, labels)
    order = np.random.default_rng(5).permutation(labels.size)
    assert ridge_probe(features[order], labels[order]) == pytest.approx(value, abs=1e-12)
    assert ridge_probe(features, (labels + 1) % 4) == pytest.approx(value, abs=1e-12)
    assert ridge_probe(features * np.linspace(0.01, 100, 30), labels) == pytest.approx(value, abs=1e-12)
    raw = ridge_probe(features, labels, standardize=False)
    assert ridge_probe(1e-4 * features, labels, standardize=False) == pytest.approx(raw, abs=1e-12)


def test_separable_classes_score_one_and_random_labels_score_near_chance():
    features, labels = _data(5, 20, 16, 2, spread=20.0)
    assert ridge_probe(features, labels) == 1.0
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(400, 50))
    chance = ridge_probe(noise, np.repeat(np.arange(4), 100))
    assert 0.1 < chance < 0.4


def test_identical_samples_predict_from_the_others_priors():
    # Intercept only: leaving a sample out makes its class the rarest of balanced classes, never predicted.
    assert ridge_probe(np.ones((12, 3)), np.repeat(np.arange(3), 4)) == 0.0


def test_the_class_wraps_the_function_and_shares_statistics():
    features, labels = _data(3, 10, 8, 4)
    stats = Statistics(features, labels)
    assert RidgeProbe(grid=(0.1, 1.0)).fit(features, labels).score_ == ridge_probe(
        stats=stats, grid=(0.1, 1.0)
    )


@pytest.mark.parametrize("grid", [(), (0.0, 1.0), (-1.0,), (float("nan"),)])
def test_a_bad_grid_is_refused(grid):
    features, labels = _data(2, 5, 3, 0)
    with pytest.raises(ValueError, match="grid must be"):
        ridge_probe(features, labels, grid=grid)


def test_streamed_statistics_are_refused_with_the_reason():
    features, labels = _data(2, 5, 3, 0)
    streamed = StreamingStatistics(n_classes=2)
    streamed.update(features, labels)
    with pytest.raises(SamplesRequiredError):
        ridge_probe(stats=streamed.finalize())


def test_equals_scikit_learns_leave_one_out_ridge_path():
    from sklearn.linear_model import RidgeCV

    def argmax_accuracy(predictor, x, targets):
        return float(np.mean(predictor.predict(x).argmax(axis=1) == targets.argmax(axis=1)))

    for n_classes, n_per_class, dim in [(2, 30, 12), (5, 20, 200), (7, 30, 50)]:
        features, labels = _data(n_classes, n_per_class, dim, n_classes, spread=0.4)
        x = (features - features.mean(axis=0)) / features.std(axis=0)
        alphas = np.asarray(DEFAULT_RIDGE_GRID) * float((x**2).sum()) / x.shape[0]
        reference = RidgeCV(alphas=alphas, scoring=argmax_accuracy).fit(x, np.eye(n_classes)[labels]).best_score_
        assert ridge_probe(features, labels) == pytest.approx(reference, abs=1e-12)
