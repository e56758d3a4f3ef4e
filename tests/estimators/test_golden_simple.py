"""Golden-value and property tests for the simple estimators:
leep, nce, knn, linear_probe and class_means.

Expected values come from the slow, independent implementations in ``_reference_simple.py``
and from tiny hand-computed cases worked out in the comments below.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy.special import softmax

try:  # works whether or not tests/estimators is a package
    from . import _reference_simple as ref
except ImportError:  # pragma: no cover - depends on pytest import mode / rootdir layout
    import _reference_simple as ref


def _score(name, features=None, labels=None, **kwargs) -> float:
    from estimators import score  # imported lazily so the reference-only tests always run

    value = score(name, features, labels, **kwargs)
    assert isinstance(value, float), f"score() must return a Python float, got {type(value)!r}"
    return value


def _statistics(features, labels, source_probs=None):
    from estimators import Statistics

    return Statistics(features, labels, source_probs=source_probs)


# --------------------------------------------------------------------------------------------
# Seeded synthetic data
# --------------------------------------------------------------------------------------------
# (N, D, C, C_source); unequal class sizes are drawn from a Dirichlet (every class >= 3).
SHAPES = [(40, 3, 2, 4), (97, 7, 3, 5), (150, 20, 5, 10), (400, 50, 8, 12), (64, 12, 4, 3)]
SHAPE_IDS = [f"N{n}-D{d}-C{c}-Cs{cs}" for n, d, c, cs in SHAPES]


@functools.cache
def dataset(index: int):
    """Features (overlapping Gaussian classes, offset from the origin), int labels, source probs."""
    n, d, c, cs = SHAPES[index]
    rng = np.random.default_rng(1000 + index)
    sizes = np.maximum(3, np.floor(rng.dirichlet(np.full(c, 2.0)) * n).astype(int))
    while sizes.sum() > n:
        sizes[np.argmax(sizes)] -= 1
    while sizes.sum() < n:
        sizes[np.argmin(sizes)] += 1
    y = np.repeat(np.arange(c), sizes)
    rng.shuffle(y)
    centres = rng.normal(size=(c, d)) * (2.0 / np.sqrt(d))
    x = centres[y] + rng.normal(size=(n, d)) + 3.0 * rng.normal(size=d)
    mixing = 1.5 * rng.normal(size=(c, cs))
    probs = softmax(mixing[y] + rng.normal(size=(n, cs)), axis=1)
    for arr in (x, y, probs):
        arr.setflags(write=False)
    return x, y, probs


def renamings(y):
    """Yield (description, renamed labels) pairs: permuted ints, sparse ints and strings."""
    classes = np.unique(y)
    perm = classes[::-1].copy()  # reverses the sorted class order
    yield "reversed-ints", perm[np.searchsorted(classes, y)]
    yield "sparse-ints", np.array([(-7, 1000, 3, 42, -1, 5, 99, 0)[v] for v in y])
    names = np.array(["zebra", "apple", "mango", "kiwi", "banana", "cherry", "date", "fig"])
    yield "strings", names[y]


def permutation(n, seed=7):
    return np.random.default_rng(seed).permutation(n)


@functools.cache
def ref_leep(index):
    x, y, p = dataset(index)
    return ref.leep(p, y)


@functools.cache
def ref_nce(index):
    x, y, p = dataset(index)
    return ref.nce(p, y)


@functools.cache
def ref_knn(index, k):
    x, y, p = dataset(index)
    return ref.knn(x, y, k=k)


@functools.cache
def ref_cm_accuracy(index):
    x, y, p = dataset(index)
    return ref.class_means_accuracy(x, y)


@functools.cache
def ref_cm_loglik(index):
    x, y, p = dataset(index)
    value, kappa, logits, yy = ref.class_means_loglik(x, y)
    return value, kappa, logits, yy


ALL_IDX = list(range(len(SHAPES)))

# ============================================================================================
# LEEP
# ============================================================================================
# Tiny hand-computed case.  N = 4, target y = [0, 0, 1, 1], two source classes:
#   theta = [[0.9, 0.1],
#            [0.6, 0.4],
#            [0.2, 0.8],
#            [0.3, 0.7]]
# Joint P(y, z) = (1/4) * column sums per target class:
#   P(0,0) = (0.9+0.6)/4 = 0.375   P(0,1) = (0.1+0.4)/4 = 0.125
#   P(1,0) = (0.2+0.3)/4 = 0.125   P(1,1) = (0.8+0.7)/4 = 0.375
# P(z=0) = P(z=1) = 0.5  =>  P(0|0) = 0.75, P(1|0) = 0.25, P(0|1) = 0.25, P(1|1) = 0.75
# EEP_i = sum_z P(y_i|z) theta_i(z):
#   i0: 0.75*0.9 + 0.25*0.1 = 0.70        i1: 0.75*0.6 + 0.25*0.4 = 0.55
#   i2: 0.25*0.2 + 0.75*0.8 = 0.65        i3: 0.25*0.3 + 0.75*0.7 = 0.60
# LEEP = (1/4) * log(0.70 * 0.55 * 0.65 * 0.60) = log(0.15015) / 4 ~= -0.474030
LEEP_TINY_THETA = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
LEEP_TINY_Y = np.array([0, 0, 1, 1])
LEEP_TINY_VALUE = math.log(0.70 * 0.55 * 0.65 * 0.60) / 4


def test_reference_leep_hand_computed():
    assert ref.leep(LEEP_TINY_THETA, LEEP_TINY_Y) == pytest.approx(LEEP_TINY_VALUE, rel=1e-14)


def test_leep_hand_computed():
    value = _score("leep", None, LEEP_TINY_Y, source_probs=LEEP_TINY_THETA)
    assert value == pytest.approx(LEEP_TINY_VALUE, rel=1e-12)
    assert value == pytest.approx(-0.4740301211381994, rel=1e-12)


def test_leep_zero_probability_source_columns_are_dropped():
    # A source class that never receives probability mass contributes nothing: inserting
    # all-zero columns (in the middle and at the end) must not change the hand-computed value.
    theta = np.column_stack([LEEP_TINY_THETA[:, 0], np.zeros(4), LEEP_TINY_THETA[:, 1], np.zeros(4)])
    assert ref.leep(theta, LEEP_TINY_Y) == pytest.approx(LEEP_TINY_VALUE, rel=1e-14)
    value = _score("leep", None, LEEP_TINY_Y, source_probs=theta)
    assert math.isfinite(value)
    assert value == pytest.approx(LEEP_TINY_VALUE, rel=1e-12)


@pytest.mark.parametrize("index", ALL_IDX, ids=SHAPE_IDS)
def test_leep_golden(index):
    x, y, p = dataset(index)
    assert _score("leep", None, y, source_probs=p) == pytest.approx(ref_leep(index), rel=1e-9)


def test_leep_float32_source_probs_give_float64_answer():
    x, y, p = dataset(2)
    p32 = p.astype(np.float32)  # rows now sum to 1 only to ~1e-7
    expected = ref.leep(p32.astype(np.float64), y)
    assert _score("leep", None, y, source_probs=p32) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["leep", "nce"])
def test_source_prob_estimators_ignore_features(name):
    x, y, p = dataset(1)
    without = _score(name, None, y, source_probs=p)
    assert _score(name, x, y, source_probs=p) == pytest.approx(without, rel=1e-12)


# ============================================================================================
# NCE
# ============================================================================================
# Hand case 1.  y = [0, 0, 1, 1];  theta rows -> argmax z = [0, 1, 1, 1]
#   counts: (y=0,z=0)=1, (0,1)=1, (1,1)=2;  P(z=0) = 1/4, P(z=1) = 3/4
#   NCE = 1/4*log((1/4)/(1/4)) + 1/4*log((1/4)/(3/4)) + 2/4*log((2/4)/(3/4))
#       = 0.25*log(1/3) + 0.5*log(2/3) ~= -0.477386
NCE_TINY_THETA = np.array([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.9]])
NCE_TINY_Y = np.array([0, 0, 1, 1])
NCE_TINY_VALUE = 0.25 * math.log(1 / 3) + 0.5 * math.log(2 / 3)

# Hand case 2 (string labels, 3 target classes; every class has >= 2 samples as the package
# requires).  y = [a, a, a, a, b, b, c, c], z = argmax theta = [0, 0, 0, 1, 1, 1, 1, 0]
#   counts: (a,0)=3, (a,1)=1, (b,1)=2, (c,1)=1, (c,0)=1;  P(z=0) = 4/8, P(z=1) = 4/8
#   NCE = 3/8*log(3/4) + 1/8*log(1/4) + 2/8*log(2/4) + 1/8*log(1/4) + 1/8*log(1/4)
#       = 3/8*(log 3 - 2 log 2) - 3/8*(2 log 2) - 2/8*log 2
#       = (3 log 3 - 14 log 2) / 8 ~= -0.801028
NCE_TINY2_THETA = np.array(
    [[0.7, 0.3], [0.55, 0.45], [0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.05, 0.95], [0.3, 0.7], [0.6, 0.4]]
)
NCE_TINY2_Y = np.array(["a", "a", "a", "a", "b", "b", "c", "c"])
NCE_TINY2_VALUE = (3 * math.log(3) - 14 * math.log(2)) / 8


def test_reference_nce_hand_computed():
    assert ref.nce(NCE_TINY_THETA, NCE_TINY_Y) == pytest.approx(NCE_TINY_VALUE, rel=1e-14)
    assert ref.nce(NCE_TINY2_THETA, NCE_TINY2_Y) == pytest.approx(NCE_TINY2_VALUE, rel=1e-14)


def test_nce_hand_computed():
    value = _score("nce", None, NCE_TINY_Y, source_probs=NCE_TINY_THETA)
    assert value == pytest.approx(NCE_TINY_VALUE, rel=1e-12)
    assert value == pytest.approx(-0.4773856262211097, rel=1e-12)


def test_nce_hand_computed_three_classes_string_labels():
    value = _score("nce", None, NCE_TINY2_Y, source_probs=NCE_TINY2_THETA)
    assert value == pytest.approx(NCE_TINY2_VALUE, rel=1e-12)
    assert value == pytest.approx(-0.8010279577293631, rel=1e-12)


def test_nce_independent_source_gives_minus_label_entropy():
    # y = [0, 0, 1, 1] with hard source labels z = [0, 1, 0, 1]: Y independent of Z, so
    # NCE = -H(Y|Z) = -H(Y) = -log 2.
    theta = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    assert ref.nce(theta, [0, 0, 1, 1]) == pytest.approx(-math.log(2), rel=1e-14)
    assert _score("nce", None, np.array([0, 0, 1, 1]), source_probs=theta) == pytest.approx(
        -math.log(2), rel=1e-12
    )


def test_nce_perfect_source_gives_zero():
    # z = argmax theta equals y exactly -> H(Y|Z) = 0.
    assert _score("nce", None, LEEP_TINY_Y, source_probs=LEEP_TINY_THETA) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("index", ALL_IDX, ids=SHAPE_IDS)
def test_nce_golden(index):
    x, y, p = dataset(index)
    assert _score("nce", None, y, source_probs=p) == pytest.approx(ref_nce(index), rel=1e-9)


@pytest.mark.parametrize("index", [0, 2], ids=[SHAPE_IDS[0], SHAPE_IDS[2]])
def test_leep_equals_nce_for_one_hot_source_probs(index):
    # With one-hot theta_i = e_{z_i}, LEEP = (1/N) sum_i log P(y_i|z_i) = sum P(y,z) log P(y|z) = NCE.
    x, y, p = dataset(index)
    one_hot = np.eye(p.shape[1])[np.argmax(p, axis=1)]
    assert ref.leep(one_hot, y) == pytest.approx(ref.nce(one_hot, y), rel=1e-12)
    leep = _score("leep", None, y, source_probs=one_hot)
    nce = _score("nce", None, y, source_probs=one_hot)
    assert leep == pytest.approx(nce, rel=1e-9)
    assert nce == pytest.approx(ref.nce(one_hot, y), rel=1e-9)


@pytest.mark.parametrize("name", ["leep", "nce"])
@pytest.mark.parametrize("index", [1, 3], ids=[SHAPE_IDS[1], SHAPE_IDS[3]])
def test_source_prob_estimators_invariances(name, index):
    x, y, p = dataset(index)
    expected = ref_leep(index) if name == "leep" else ref_nce(index)
    order = permutation(len(y))
    assert _score(name, None, y[order], source_probs=p[order]) == pytest.approx(expected, rel=1e-9)
    for desc, renamed in renamings(y):
        got = _score(name, None, renamed, source_probs=p)
        assert got == pytest.approx(expected, rel=1e-9), desc


# ============================================================================================
# kNN (leave-one-out accuracy, fraction in [0, 1])
# ============================================================================================
# Distance-tie case (k = 1), 1-D features on a line (every squared distance exact in float64):
#   idx:   0    1    2    3     4     5
#   x:     0    2    1    10    12    11
#   y:     0    1    0    1     0     1
#   i0 -> nearest i2 (d=1)                      pred 0, y=0  correct
#   i1 -> nearest i2 (d=1)                      pred 0, y=1  wrong
#   i2 -> i0 and i1 both at d=1, lowest index i0 -> pred 0, y=0  correct
#   i3 -> nearest i5 (d=1)                      pred 1, y=1  correct
#   i4 -> nearest i5 (d=1)                      pred 1, y=0  wrong
#   i5 -> i3 and i4 both at d=1, lowest index i3 -> pred 1, y=1  correct
#   accuracy = 4/6  (a "highest index wins" rule would give 2/6)
KNN_TIE_X = np.array([[0.0], [2.0], [1.0], [10.0], [12.0], [11.0]])
KNN_TIE_Y = np.array([0, 1, 0, 1, 0, 1])

# Vote-tie case (k = 2):
#   idx:   0    1    2     3
#   x:     0    1    1.5   3
#   y:     1    1    0     0
#   i0 -> i1 (d=1, y=1), i2 (d=1.5, y=0): 1-1 tie -> nearest (i1) -> pred 1, y=1  correct
#   i1 -> i2 (d=.5, y=0), i0 (d=1, y=1):  1-1 tie -> nearest (i2) -> pred 0, y=1  wrong
#   i2 -> i1 (d=.5, y=1), then i0 and i3 at d=1.5 -> lowest index i0 (y=1): pred 1, y=0  wrong
#   i3 -> i2 (d=1.5, y=0), i1 (d=2, y=1): 1-1 tie -> nearest (i2) -> pred 0, y=0  correct
#   accuracy = 2/4  (breaking vote ties toward the smallest label would give 1/4)
KNN_VOTE_X = np.array([[0.0], [1.0], [1.5], [3.0]])
KNN_VOTE_Y = np.array([1, 1, 0, 0])


def test_reference_knn_hand_computed():
    assert ref.knn(KNN_TIE_X, KNN_TIE_Y) == 4 / 6
    assert ref.knn(KNN_VOTE_X, KNN_VOTE_Y, k=2) == 2 / 4


def test_knn_distance_ties_lowest_index_wins():
    assert _score("knn", KNN_TIE_X, KNN_TIE_Y) == 4 / 6
    # same data embedded in 3-D with integer coordinates (still exact distances)
    x3 = np.column_stack([KNN_TIE_X[:, 0], np.full(6, 5.0), np.full(6, -3.0)])
    assert _score("knn", x3, KNN_TIE_Y, k=1) == 4 / 6


def test_knn_vote_ties_go_to_nearest_neighbour_label():
    assert _score("knn", KNN_VOTE_X, KNN_VOTE_Y, k=2) == 2 / 4
    # the rule depends on distances, not on label names
    assert _score("knn", KNN_VOTE_X, np.array(["b", "b", "a", "a"]), k=2) == 2 / 4
    assert _score("knn", KNN_VOTE_X, np.array(["a", "a", "b", "b"]), k=2) == 2 / 4


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("index", ALL_IDX, ids=SHAPE_IDS)
def test_knn_golden(index, k):
    x, y, p = dataset(index)
    kwargs = {} if k == 1 else {"k": k}
    value = _score("knn", x, y, **kwargs)
    assert 0.0 <= value <= 1.0
    assert value == ref_knn(index, k)


def test_knn_golden_k5_two_classes():
    # odd k with two classes -> no vote ties at all
    x, y, p = dataset(0)
    assert _score("knn", x, y, k=5) == ref_knn(0, 5)


def test_knn_default_k_is_one():
    x, y, p = dataset(1)
    assert _score("knn", x, y) == _score("knn", x, y, k=1) == ref_knn(1, 1)


@pytest.mark.parametrize("index", [1, 3], ids=[SHAPE_IDS[1], SHAPE_IDS[3]])
def test_knn_invariances(index):
    x, y, p = dataset(index)
    expected = ref_knn(index, 1)
    order = permutation(len(y))
    assert _score("knn", x[order], y[order]) == expected
    for desc, renamed in renamings(y):
        assert _score("knn", x, renamed) == expected, desc


def test_knn_float32_features_computed_in_float64():
    x, y, p = dataset(2)
    x32 = x.astype(np.float32)
    assert _score("knn", x32, y) == ref.knn(x32.astype(np.float64), y)


# ============================================================================================
# linear_probe (properties only; the exact split rule is an implementation detail)
# ============================================================================================
def _one_test_sample(y, train_fraction=0.5) -> float:
    """Accuracy worth of one test sample, 1/n_test, using a lower bound on n_test.

    Per class n_c - ceil(n_c*f) == floor(n_c*(1-f)) is the smallest test share any sensible
    rounding of a stratified split can leave, so 1/sum(...) is an upper bound on 1/n_test.
    """
    _, counts = np.unique(y, return_counts=True)
    n_test = int(sum(max(1, math.floor(c * (1 - train_fraction))) for c in counts))
    return 1.0 / n_test


def _blobs(seed, n_per_class, d, c, spread):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * spread
    y = np.repeat(np.arange(c), n_per_class)
    x = centres[y] + rng.normal(size=(len(y), d))
    return x, y


@pytest.mark.parametrize("index", ALL_IDX, ids=SHAPE_IDS)
def test_linear_probe_in_unit_interval(index):
    x, y, p = dataset(index)
    value = _score("linear_probe", x, y)
    assert 0.0 <= value <= 1.0


# The brief's solver settings (max_iter=20, tol=0.1) and whatever the package's defaults are.
PROBE_SETTINGS = [{}, {"max_iter": 20, "tol": 0.1}]
PROBE_IDS = ["defaults", "maxiter20-tol0.1"]


@pytest.mark.parametrize("params", PROBE_SETTINGS, ids=PROBE_IDS)
def test_linear_probe_well_separated_clusters(params):
    x, y = _blobs(3, [25, 40, 31], 5, 3, spread=20.0)
    assert _score("linear_probe", x, y, **params) >= 0.98


def test_linear_probe_well_separated_small_magnitude_features():
    # Beyond the letter of the brief: separable classes must not score chance merely because
    # the features are small (an early-stopped L-BFGS on raw features can stop at w = 0).
    x, y = _blobs(3, [25, 40, 31], 5, 3, spread=20.0)
    assert _score("linear_probe", 1e-3 * x, y) >= 0.98


@pytest.mark.parametrize("params", PROBE_SETTINGS, ids=PROBE_IDS)
@pytest.mark.parametrize(("c", "low", "high"), [(2, 0.30, 0.70), (4, 0.08, 0.45)])
def test_linear_probe_random_labels_near_chance(c, low, high, params):
    rng = np.random.default_rng(11 + c)
    x = rng.normal(size=(400, 10))
    y = rng.integers(0, c, size=400)
    value = _score("linear_probe", x, y, **params)
    assert low <= value <= high, f"chance is {1 / c:.2f}, got {value}"


def test_linear_probe_defaults_match_explicit_params():
    # Defaults: sklearn's solver settings on standardised features (the reference SplitLogistic's
    # max_iter=20, tol=0.1 on raw features stops L-BFGS before its first step on small features).
    x, y, p = dataset(1)
    explicit = _score(
        "linear_probe", x, y, train_fraction=0.5, seed=0, max_iter=100, tol=1e-4, C=1.0, standardize=True
    )
    assert _score("linear_probe", x, y) == explicit
    reference_settings = _score("linear_probe", x, y, max_iter=20, tol=0.1, standardize=False)
    assert 0.0 <= reference_settings <= 1.0


def test_linear_probe_same_seed_same_value_and_other_seeds_valid():
    x, y, p = dataset(2)
    first = _score("linear_probe", x, y, seed=3)
    assert _score("linear_probe", x, y, seed=3) == first
    # A different seed usually draws a different split (and so possibly a different value),
    # but equality is not impossible, so only validity is asserted here.
    others = [_score("linear_probe", x, y, seed=s) for s in (0, 1, 2, 4)]
    assert all(0.0 <= v <= 1.0 for v in others)


@pytest.mark.parametrize("params", PROBE_SETTINGS, ids=PROBE_IDS)
@pytest.mark.parametrize("index", [1, 2, 4], ids=[SHAPE_IDS[1], SHAPE_IDS[2], SHAPE_IDS[4]])
def test_linear_probe_invariances(index, params):
    # The split itself must not depend on sample order or label names, so the same samples are
    # trained on and tested on.  The fitted model, however, may differ in the last bits: lbfgs
    # is stopped early (max_iter=20, tol=0.1) and summation order / class-column order change
    # floating-point rounding of the loss and gradient, so a test sample sitting right on a
    # decision boundary may flip.  We therefore allow one test sample's worth (1/n_test).
    x, y, p = dataset(index)
    base = _score("linear_probe", x, y, **params)
    tol = _one_test_sample(y) + 1e-12
    order = permutation(len(y), seed=index)
    assert abs(_score("linear_probe", x[order], y[order], **params) - base) <= tol
    for desc, renamed in renamings(y):
        assert abs(_score("linear_probe", x, renamed, **params) - base) <= tol, desc


# ============================================================================================
# class_means (Seddik & Tamaazousti 2022), leave-one-out
# ============================================================================================
@pytest.mark.parametrize("index", ALL_IDX, ids=SHAPE_IDS)
def test_class_means_accuracy_golden(index):
    x, y, p = dataset(index)
    value = _score("class_means", x, y)
    assert value == pytest.approx(ref_cm_accuracy(index), rel=1e-9)
    assert _score("class_means", x, y, output="accuracy") == value


@pytest.mark.parametrize("index", ALL_IDX, ids=SHAPE_IDS)
def test_class_means_loglik_golden_and_maximal(index):
    x, y, p = dataset(index)
    expected, kappa, logits, yy = ref_cm_loglik(index)
    value = _score("class_means", x, y, output="loglik")
    assert value <= 0.0
    assert value == pytest.approx(expected, rel=1e-6)
    # the package's value is a maximum over kappa: it cannot be beaten by nearby scales
    for factor in (1 - 1e-3, 1 + 1e-3):
        assert value >= ref.class_means_loglik_at(logits, yy, kappa * factor) - 1e-12


def test_reference_class_means_loglik_is_maximal():
    # sanity check of the reference optimiser itself on one data set
    value, kappa, logits, y = ref_cm_loglik(2)
    assert kappa > 0
    for factor in (0.5, 0.9, 0.999, 1.001, 1.1, 2.0):
        assert value >= ref.class_means_loglik_at(logits, y, kappa * factor)
    assert value > ref.class_means_loglik_at(logits, y, 0.0)  # = -log C


@pytest.mark.parametrize("index", [1, 4], ids=[SHAPE_IDS[1], SHAPE_IDS[4]])
def test_class_means_scale_and_translation_invariance(index):
    x, y, p = dataset(index)
    acc = ref_cm_accuracy(index)
    ll = ref_cm_loglik(index)[0]
    shift = np.random.default_rng(5).normal(size=x.shape[1]) * 4.0
    for desc, xt in (
        ("scale 2.5", 2.5 * x),
        ("scale 1e-3", 1e-3 * x),
        ("translate", x + shift),
        ("scale+translate", 0.3 * x - shift),
    ):
        assert _score("class_means", xt, y) == pytest.approx(acc, rel=1e-9), desc
        assert _score("class_means", xt, y, output="loglik") == pytest.approx(ll, rel=1e-6), desc


@pytest.mark.parametrize("index", [1, 3], ids=[SHAPE_IDS[1], SHAPE_IDS[3]])
def test_class_means_order_and_label_invariance(index):
    x, y, p = dataset(index)
    acc = ref_cm_accuracy(index)
    ll = ref_cm_loglik(index)[0]
    order = permutation(len(y))
    assert _score("class_means", x[order], y[order]) == pytest.approx(acc, rel=1e-9)
    assert _score("class_means", x[order], y[order], output="loglik") == pytest.approx(ll, rel=1e-6)
    for desc, renamed in renamings(y):
        assert _score("class_means", x, renamed) == pytest.approx(acc, rel=1e-9), desc
        assert _score("class_means", x, renamed, output="loglik") == pytest.approx(ll, rel=1e-6), desc


def test_class_means_well_separated_clusters():
    x, y = _blobs(4, [12, 30, 9, 20], 6, 4, spread=25.0)
    assert ref.class_means_accuracy(x, y) == 1.0
    assert _score("class_means", x, y) == 1.0
    ll = _score("class_means", x, y, output="loglik")
    # LOO-separable: the supremum over kappa is 0 (approached as kappa grows)
    assert ll <= 0.0
    assert ll > -0.05


def test_class_means_float32_features_computed_in_float64():
    x, y, p = dataset(4)
    x32 = x.astype(np.float32)
    expected = ref.class_means_accuracy(x32.astype(np.float64), y)
    assert _score("class_means", x32, y) == pytest.approx(expected, rel=1e-9)


# ============================================================================================
# Precomputed Statistics give the same answers
# ============================================================================================
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("leep", {}),
        ("nce", {}),
        ("knn", {}),
        ("knn", {"k": 3}),
        ("linear_probe", {}),
        ("class_means", {}),
        ("class_means", {"output": "loglik"}),
    ],
)
def test_statistics_give_same_value(name, params):
    # Statistics replace features/labels/source_probs (passing both is an error by design).
    x, y, p = dataset(4)
    plain = _score(name, x, y, source_probs=p, **params)
    stats = _statistics(x, y, source_probs=p)
    assert _score(name, stats=stats, **params) == pytest.approx(plain, rel=1e-9)
    # a Statistics object can be reused
    assert _score(name, stats=stats, **params) == pytest.approx(plain, rel=1e-9)
