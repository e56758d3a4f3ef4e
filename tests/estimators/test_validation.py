"""Bad-input tests: every registered estimator must reject invalid input with a ValueError whose
message carries a useful hint (checked with a case-insensitive keyword regex)."""

from __future__ import annotations

import numpy as np
import pytest

EXPECTED_NAMES = {
    "logme",
    "leep",
    "nce",
    "h_score",
    "shrinkage_h_score",
    "gbc",
    "transrate",
    "sfda",
    "lda",
    "knn",
    "linear_probe",
    "ridge_probe",
    "class_means",
}
SOURCE_PROB_NAMES = {"leep", "nce"}


def _registered_infos() -> dict:
    try:
        from estimators import list_estimators
    except ImportError:  # package not there yet: fall back to the expected names below
        return {}
    return {info.name: info for info in list_estimators()}


_INFOS = _registered_infos()
ALL_NAMES = sorted(set(_INFOS) | EXPECTED_NAMES)


def _needs_source_probs(name: str) -> bool:
    if name in SOURCE_PROB_NAMES:
        return True
    info = _INFOS.get(name)
    return info is not None and "source" in repr(info.needs).lower()


def _needs_features(name: str) -> bool:
    if name in SOURCE_PROB_NAMES:
        return False
    info = _INFOS.get(name)
    return info is None or "feat" in repr(info.needs).lower() or not _needs_source_probs(name)


FEATURE_NAMES = [n for n in ALL_NAMES if _needs_features(n)]
SOURCE_NAMES = [n for n in ALL_NAMES if _needs_source_probs(n)]

# --------------------------------------------------------------------------------------------
# Valid base data: N = 30, D = 5, three classes of 10, with matching source probabilities.
# --------------------------------------------------------------------------------------------
_RNG = np.random.default_rng(2024)
N, D, C, CS = 30, 5, 3, 4
Y = np.repeat(np.arange(C), N // C)
X = _RNG.normal(size=(C, D))[Y] * 2.0 + _RNG.normal(size=(N, D))
_LOGITS = _RNG.normal(size=(N, CS)) + np.eye(C, CS)[Y] * 2.0
P = np.exp(_LOGITS) / np.exp(_LOGITS).sum(axis=1, keepdims=True)
for _arr in (X, Y, P, _LOGITS):
    _arr.setflags(write=False)  # the package must not modify its inputs


def _score(name, features, labels, **kwargs):
    from estimators import score

    return score(name, features, labels, **kwargs)


def _call(name, features=None, labels=None, source_probs=None, *, omit_source_probs=False):
    """Call score() giving each estimator what it needs; unchanged pieces default to valid data."""
    features = X if features is None else features
    labels = Y if labels is None else labels
    source_probs = P if source_probs is None else source_probs
    kwargs = {}
    if _needs_source_probs(name) and not omit_source_probs:
        kwargs["source_probs"] = source_probs
    return _score(name, features if _needs_features(name) else None, labels, **kwargs)


# Keyword hints expected in the error messages (matched case-insensitively with re.search).
HINT_CLASS = r"class"
HINT_NAN = r"nan|finite"
HINT_INF = r"inf|finite"
HINT_LENGTH = r"length|shape|rows|mismatch|match|same number"
HINT_EMPTY = r"empty|no samples|0 samples|zero|at least|rows|shape|class"
HINT_NDIM = r"2-?d|two-dimensional|ndim|dimension|shape|matrix"
HINT_SOURCE = r"source_probs"
HINT_SUM = r"sum|probab|softmax|simplex|normali"
HINT_NEGATIVE = r"negative|probab|\[0|non-neg|source_probs"


def raises(*hints: str):
    """pytest.raises(ValueError) whose message must contain one of the hint patterns."""
    return pytest.raises(ValueError, match="(?i)" + "|".join(hints))


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
def test_list_estimators_contains_expected_names():
    from estimators import list_estimators

    names = {info.name for info in list_estimators()}
    missing = EXPECTED_NAMES - names
    assert not missing, f"missing estimators: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_estimator_info_fields(name):
    from estimators import list_estimators

    infos = {info.name: info for info in list_estimators()}
    info = infos[name]
    assert info.higher_is_better is True
    assert info.pool_free is True
    assert info.reference, "every estimator should cite its reference"
    assert ("source" in repr(info.needs).lower()) == (name in SOURCE_PROB_NAMES), info.needs


@pytest.mark.parametrize("name", ALL_NAMES)
def test_valid_base_data_gives_finite_float(name):
    # Makes sure the bad-input tests below fail because of the one thing they break.
    value = _call(name)
    assert isinstance(value, float)
    assert np.isfinite(value)


def test_unknown_estimator_lists_known_names():
    with pytest.raises(ValueError) as excinfo:
        _score("nope", X, Y)
    message = str(excinfo.value)
    assert "logme" in message
    assert "knn" in message


# --------------------------------------------------------------------------------------------
# Label problems (all estimators)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_NAMES)
def test_single_class_rejected(name):
    with raises(HINT_CLASS):
        _call(name, labels=np.zeros(N, dtype=int))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_class_with_single_sample_rejected(name):
    labels = Y.copy()
    labels[-1] = 7  # class "7" has exactly one member
    with raises(HINT_CLASS):
        _call(name, labels=labels)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_class_with_single_sample_rejected_string_labels(name):
    labels = np.array(["cat", "dog", "emu"])[Y].astype(object)
    labels[0] = "yak"
    with raises(HINT_CLASS):
        _call(name, labels=labels)


# --------------------------------------------------------------------------------------------
# Feature problems (estimators that need features)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_nan_in_features_rejected(name):
    bad = X.copy()
    bad[3, 2] = np.nan
    with raises(HINT_NAN):
        _call(name, features=bad)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_inf_in_features_rejected(name, value):
    bad = X.copy()
    bad[5, 0] = value
    with raises(HINT_INF):
        _call(name, features=bad)


@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_features_labels_length_mismatch_rejected(name):
    with raises(HINT_LENGTH):
        _call(name, features=X[:-3])


@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_empty_features_rejected(name):
    with raises(HINT_EMPTY):
        _call(name, features=np.empty((0, D)), labels=np.empty(0, dtype=int), source_probs=np.empty((0, CS)))


@pytest.mark.parametrize("shape", ["1-D", "3-D"])
@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_features_wrong_ndim_rejected(name, shape):
    bad = X[:, 0].copy() if shape == "1-D" else np.repeat(X[:, :, None], 2, axis=2)
    with raises(HINT_NDIM):
        _call(name, features=bad)


# --------------------------------------------------------------------------------------------
# source_probs problems (leep, nce and anything else that needs source probabilities)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_missing_source_probs_rejected(name):
    with raises(HINT_SOURCE):
        _call(name, omit_source_probs=True)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_missing_source_probs_rejected_even_with_features(name):
    with raises(HINT_SOURCE):
        _score(name, X, Y)


@pytest.mark.parametrize("rows", [N - 1, N + 2])
@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_source_probs_wrong_number_of_rows_rejected(name, rows):
    bad = np.vstack([P, P])[:rows]
    with raises(HINT_SOURCE):
        _call(name, source_probs=bad)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_source_probs_logits_instead_of_probabilities_rejected(name):
    with raises(HINT_SUM):
        _call(name, source_probs=_LOGITS)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_source_probs_rows_not_summing_to_one_rejected(name):
    bad = P.copy()
    bad[4] *= 1.3  # non-negative, but row 4 sums to 1.3
    with raises(HINT_SUM):
        _call(name, source_probs=bad)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_source_probs_nan_rejected(name):
    bad = P.copy()
    bad[2, 1] = np.nan
    with raises(HINT_NAN):
        _call(name, source_probs=bad)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_source_probs_inf_rejected(name):
    bad = P.copy()
    bad[2, 1] = np.inf
    with raises(HINT_INF, HINT_SUM):
        _call(name, source_probs=bad)


@pytest.mark.parametrize("shape", ["1-D", "3-D"])
@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_source_probs_wrong_ndim_rejected(name, shape):
    bad = P[:, 0].copy() if shape == "1-D" else np.repeat(P[:, :, None], 2, axis=2) / 2
    with raises(HINT_SOURCE, HINT_NDIM):
        _call(name, source_probs=bad)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_source_probs_empty_rejected(name):
    with raises(HINT_EMPTY):
        _call(name, labels=np.empty(0, dtype=int), source_probs=np.empty((0, CS)))


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_source_probs_negative_entries_rejected(name):
    # Beyond the letter of the contract: rows sum to 1 but contain a negative "probability".
    bad = P.copy()
    bad[6, 1] = -0.1
    bad[6, 0] = 1.0 - (bad[6].sum() - bad[6, 0])  # row 6 sums to 1 again
    assert abs(bad[6].sum() - 1.0) < 1e-12
    with raises(HINT_NEGATIVE):
        _call(name, source_probs=bad)
