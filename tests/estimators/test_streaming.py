"""Streamed statistics: batch-by-batch accumulation equals the in-memory Statistics.

Every registered estimator either gives the in-memory value (to 1e-8 relative) from streamed
statistics, or refuses with a SamplesRequiredError that names it — checked for the whole
registry, so an estimator added later is covered too.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from estimators import SamplesRequiredError, Statistics, StreamingStatistics, list_estimators, score
from estimators._linalg import symmetrize

RTOL = 1e-8

#: (name, params) that must run on streamed statistics built with class_scatter=True.
STREAMABLE = [
    ("logme", {}),
    ("logme", {"algorithm": "icml"}),
    ("h_score", {}),
    ("shrinkage_h_score", {}),
    ("gbc", {}),
    ("gbc", {"pca_dim": None, "gaussian_type": "diagonal"}),
    ("gbc", {"pca_dim": 6}),
    ("gbc", {"pca_dim": 6, "gaussian_type": "diagonal"}),
    ("transrate", {}),
    ("transrate", {"eps": 1e-2}),
    ("nce", {}),
]
#: Estimators whose value is a mean of a non-linear per-sample quantity: they need the samples.
NEED_SAMPLES = ["knn", "linear_probe", "ridge_probe", "lda", "sfda", "class_means", "leep"]


def _clusters(seed: int, n: int, d: int, c: int, *, offset: float = 0.0, counts=None):
    """Gaussian class clusters, sorted by label so that the last classes first appear late."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(c), counts) if counts is not None else rng.integers(0, c, n)
    labels = np.sort(labels)
    features = rng.normal(size=(labels.size, d)) + 1.2 * rng.normal(size=(c, d))[labels] + offset
    source_probs = rng.dirichlet(np.full(6, 0.5), size=labels.size)
    return features, labels, source_probs


def _wide_relu():
    rng = np.random.default_rng(0)
    labels = np.sort(rng.integers(0, 3, 30))
    features = np.maximum(rng.normal(size=(30, 200)) + 1.2 * rng.normal(size=(3, 200))[labels] + 3.0, 0.0) * 1.5
    return features, labels, rng.dirichlet(np.full(6, 0.5), size=30)


@functools.cache
def dataset(key: str):
    builders = {
        "tall": lambda: _clusters(1, 240, 12, 4),
        "unequal": lambda: _clusters(2, 0, 10, 4, counts=(90, 30, 5, 2)),
        "relu": lambda: tuple(
            np.maximum(a, 0.0) * 1.5 if i == 0 else a for i, a in enumerate(_clusters(3, 200, 16, 3, offset=1.0))
        ),
        "wide": lambda: _clusters(4, 30, 40, 3),  # D > N: LogME's in-memory route is the N x N kernel
        "wide_relu": _wide_relu,  # D > N with a mean outside the centred span: LogME's hardest case
    }
    return builders[key]()


def _stream(features, labels, source_probs, batch_size, **kwargs) -> Statistics:
    stream = StreamingStatistics(**kwargs)
    for start in range(0, labels.size, batch_size):
        rows = slice(start, start + batch_size)
        stream.update(features[rows], labels[rows], None if source_probs is None else source_probs[rows])
    return stream.finalize()


@pytest.mark.parametrize("batch_size", [1, 7, 64, 10_000])
@pytest.mark.parametrize("key", ["tall", "unequal", "relu", "wide", "wide_relu"])
def test_streamed_estimators_equal_in_memory(key, batch_size):
    features, labels, probs = dataset(key)
    memory = Statistics(features, labels, source_probs=probs)
    streamed = _stream(features, labels, probs, batch_size, class_scatter=True)
    assert streamed.streamed and streamed.n_samples == labels.size
    for name, params in STREAMABLE:
        expected = score(name, stats=memory, **params)
        got = score(name, stats=streamed, **params)
        np.testing.assert_allclose(got, expected, rtol=RTOL, err_msg=f"{name} {params}")


@pytest.mark.parametrize("key", ["tall", "wide"])
def test_every_registered_estimator_matches_or_names_itself(key):
    """Whole registry: equal to in-memory, or a SamplesRequiredError naming the estimator."""
    features, labels, probs = dataset(key)
    memory = Statistics(features, labels, source_probs=probs)
    streamed = _stream(features, labels, probs, 16, class_scatter=True)
    refused = []
    for info in list_estimators():
        try:
            got = score(info.name, stats=streamed)
        except SamplesRequiredError as err:
            assert isinstance(err, ValueError)
            assert repr(info.name) in str(err) and "Statistics(features, labels)" in str(err)
            refused.append(info.name)
            continue
        np.testing.assert_allclose(got, score(info.name, stats=memory), rtol=RTOL, err_msg=info.name)
    assert set(NEED_SAMPLES) <= set(refused)
    assert not {name for name, _ in STREAMABLE} & set(refused)


@pytest.mark.parametrize("name", NEED_SAMPLES)
def test_sample_based_estimators_refuse_with_a_clear_message(name):
    features, labels, probs = dataset("tall")
    streamed = _stream(features, labels, probs, 50)
    with pytest.raises(SamplesRequiredError, match=f"estimator '{name}' cannot run on streamed statistics"):
        score(name, stats=streamed)


def test_logme_regression_needs_the_samples():
    features, labels, _ = dataset("tall")
    streamed = _stream(features, labels, None, 50)
    with pytest.raises(SamplesRequiredError, match="'logme'.*feature rows"):
        score("logme", None, labels.astype(float), stats=streamed, regression=True)


@pytest.mark.parametrize("name, params", [("transrate", {}), ("gbc", {"pca_dim": 4})])
def test_class_scatter_estimators_say_how_to_enable_them(name, params):
    features, labels, probs = dataset("tall")
    streamed = _stream(features, labels, probs, 50)  # class_scatter=False
    with pytest.raises(SamplesRequiredError, match=r"class_scatter=True"):
        score(name, stats=streamed, **params)
    # without PCA GBC needs only per-class variances, which are always kept
    np.testing.assert_allclose(
        score("gbc", stats=streamed, pca_dim=None), score("gbc", features, labels, pca_dim=None), rtol=RTOL
    )


def test_accumulated_moments_equal_the_in_memory_ones():
    features, labels, probs = dataset("unequal")
    memory = Statistics(features, labels, source_probs=probs)
    streamed = _stream(features, labels, probs, 9, class_scatter=True)
    for attribute in (
        "counts", "mean", "class_means", "class_sums", "centered_gram", "centered_fourth_moment",
        "class_sq_deviations", "class_scatters", "source_joint", "hard_source_joint", "within_scatter",
    ):  # fmt: skip
        np.testing.assert_allclose(
            getattr(streamed, attribute), getattr(memory, attribute), rtol=1e-10, atol=1e-9, err_msg=attribute
        )
    np.testing.assert_array_equal(streamed.classes, memory.classes)
    assert (streamed.n_features, streamed.n_classes, streamed.has_source_probs) == (10, 4, True)


@pytest.mark.parametrize("offset", [1e3, 1e5])
def test_large_common_offset_keeps_full_precision(offset):
    """Chan's pairwise merge of centred batches: no FᵀF - N μμᵀ cancellation.

    The translation-invariant scores stay at 1e-8 of the in-memory value (which centres on the
    exact mean) with a +1e5 offset, where accumulating the raw FᵀF and centring at the end is
    off by more than 1e-7 (checked here, so the test can fail).
    """
    base, labels, _ = dataset("tall")
    features = base + offset
    memory = Statistics(features, labels)
    streamed = _stream(features, labels, None, 7, class_scatter=True)
    invariant = [("h_score", {}), ("shrinkage_h_score", {}), ("transrate", {}), ("gbc", {}), ("gbc", {"pca_dim": 6})]
    for name, params in invariant:
        expected = score(name, stats=memory, **params)
        np.testing.assert_allclose(score(name, stats=streamed, **params), expected, rtol=RTOL, err_msg=name)
        # the value does not depend on the offset at all (so in-memory is right too)
        np.testing.assert_allclose(expected, score(name, base, labels, **params), rtol=1e-8, err_msg=name)
    if offset == 1e5:
        naive = Statistics(features, labels)
        naive.__dict__["centered_gram"] = symmetrize(
            features.T @ features - labels.size * np.outer(naive.mean, naive.mean)
        )
        errors = [abs(score(n, stats=naive) / score(n, stats=memory) - 1) for n in ("h_score", "transrate")]
        assert min(errors) > 1e-7, errors


def test_logme_with_a_large_offset_is_as_accurate_as_in_memory():
    """LogME is not translation invariant: with a +1e3 offset its raw FᵀF has a rank-one part
    ~1e6 N times the rest, and the value itself is only defined to ~1e-8 in float64 (in-memory
    and the independent SVD reference differ by that much). Streamed stays as close to the
    reference as in-memory does."""
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "_golden_reference", pathlib.Path(__file__).with_name("_reference.py")
    )
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    base, labels, _ = dataset("tall")
    features = base + 1e3
    expected = ref.ref_logme(features, labels)
    memory_error = abs(score("logme", features, labels) / expected - 1)
    for batch_size in (1, 13, 240):
        streamed = _stream(features, labels, None, batch_size)
        assert abs(score("logme", stats=streamed) / expected - 1) <= max(5 * memory_error, 1e-7)


def test_string_labels_and_classes_appearing_late():
    features, labels, _ = dataset("tall")
    names = np.array(["zebra", "apple", "mango", "kiwi"])[labels]
    streamed = _stream(features, names, None, 11)
    assert list(streamed.classes) == ["apple", "kiwi", "mango", "zebra"]
    for name in ("logme", "h_score", "shrinkage_h_score"):
        np.testing.assert_allclose(score(name, stats=streamed), score(name, features, names), rtol=RTOL)


def test_from_batches_and_the_n_classes_hint():
    features, labels, probs = dataset("tall")
    batches = [(features[s : s + 50], labels[s : s + 50], probs[s : s + 50]) for s in range(0, labels.size, 50)]
    a = Statistics.from_batches(batches)
    b = Statistics.from_batches(batches, n_classes=6)  # classes 4 and 5 never appear: dropped, as in memory
    for name in ("logme", "nce", "h_score"):
        np.testing.assert_allclose(score(name, stats=a), score(name, stats=b), rtol=1e-12)
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        StreamingStatistics(n_classes=3).update(features[:10], np.full(10, 3))
    with pytest.raises(ValueError, match="positive integer"):
        StreamingStatistics(n_classes=0)


def test_the_stream_goes_on_after_finalize():
    features, labels, _ = dataset("tall")
    stream = StreamingStatistics()
    stream.update(features[:120], labels[:120])
    first = stream.finalize()
    stream.update(features[120:], labels[120:])
    np.testing.assert_allclose(score("h_score", stats=first), score("h_score", features[:120], labels[:120]), rtol=RTOL)
    np.testing.assert_allclose(score("h_score", stats=stream.finalize()), score("h_score", features, labels), rtol=RTOL)


def test_memory_does_not_grow_with_the_number_of_samples():
    def held_bytes(stream: StreamingStatistics) -> int:
        return sum(v.nbytes for v in vars(stream).values() if isinstance(v, np.ndarray))

    rng = np.random.default_rng(0)
    stream = StreamingStatistics(n_classes=3)
    stream.update(rng.normal(size=(30, 20)), np.arange(30) % 3, rng.dirichlet(np.ones(4), size=30))
    small = held_bytes(stream)
    for _ in range(50):
        stream.update(rng.normal(size=(200, 20)), rng.integers(0, 3, 200), rng.dirichlet(np.ones(4), size=200))
    assert stream.n_samples == 10_030 and held_bytes(stream) == small


def test_bad_batches_are_refused_with_actionable_errors():
    rng = np.random.default_rng(0)
    stream = StreamingStatistics()
    with pytest.raises(ValueError, match="no samples were added"):
        stream.finalize()
    stream.update(np.zeros((0, 5)), [])  # empty batches are ignored
    stream.update(rng.normal(size=(4, 5)), [0, 0, 1, 1], rng.dirichlet(np.ones(3), size=4))
    with pytest.raises(ValueError, match="4 feature rows but 3 labels"):
        stream.update(rng.normal(size=(4, 5)), [0, 1, 1])
    with pytest.raises(ValueError, match="earlier batches had 5"):
        stream.update(rng.normal(size=(2, 6)), [0, 1])
    with pytest.raises(ValueError, match="every batch or with none"):
        stream.update(rng.normal(size=(2, 5)), [0, 1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        stream.update(np.full((2, 5), np.nan), [0, 1], rng.dirichlet(np.ones(3), size=2))
    with pytest.raises(ValueError, match="non-integer floats"):
        stream.update(rng.normal(size=(2, 5)), [0.5, 1.0], rng.dirichlet(np.ones(3), size=2))
    assert stream.n_samples == 4  # refused batches left no trace
    one_class = StreamingStatistics().update(rng.normal(size=(5, 3)), np.zeros(5, int))
    with pytest.raises(ValueError, match="single class"):
        one_class.finalize()
    singleton = StreamingStatistics().update(rng.normal(size=(5, 3)), [0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="fewer than 2 samples"):
        singleton.finalize()
    mixed = (
        StreamingStatistics().update(rng.normal(size=(4, 3)), [0, 0, 1, 1]).update(rng.normal(size=(2, 3)), ["a", "a"])
    )
    with pytest.raises(ValueError, match="mix strings and numbers"):
        mixed.finalize()


def test_streamed_statistics_refuse_sample_access_but_keep_moments():
    features, labels, probs = dataset("tall")
    streamed = _stream(features, labels, probs, 100)
    for attribute in ("features", "labels", "source_probs", "centered_sq_norms", "kernel", "indicator"):
        with pytest.raises(SamplesRequiredError):
            getattr(streamed, attribute)
    with pytest.raises(SamplesRequiredError):
        streamed.centered_dot(np.eye(12))
    streamed_without_probs = _stream(features, labels, None, 100)
    assert streamed_without_probs.source_probs is None and not streamed_without_probs.has_source_probs
    with pytest.raises(ValueError, match="needs source_probs"):
        score("nce", stats=streamed_without_probs)


def _accumulate(features, labels, source_probs, rows, batch_size=7, **kwargs) -> StreamingStatistics:
    stream = StreamingStatistics(**kwargs)
    for start in range(rows.start, rows.stop, batch_size):
        part = slice(start, min(start + batch_size, rows.stop))
        stream.update(features[part], labels[part], None if source_probs is None else source_probs[part])
    return stream


@pytest.mark.parametrize("n_classes", [None, 4])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_merged_partials_equal_one_pass_over_both(n_classes, offset):
    """merge(a, b) == one accumulation over a's rows then b's: what a distributed extraction's shards give."""
    features, labels, probs = dataset("unequal")  # sorted by label: the last classes appear in the second part only
    features = features + offset
    split = 95
    kwargs = {"class_scatter": True, "n_classes": n_classes}
    one_pass = _accumulate(features, labels, probs, range(labels.size), **kwargs).finalize()
    first = _accumulate(features, labels, probs, range(split), **kwargs)
    second = _accumulate(features, labels, probs, range(split, labels.size), **kwargs)
    merged = first.merge(second).finalize()
    assert second.n_samples == labels.size - split  # the merged-in part is left as it was
    for attribute in (
        "counts", "mean", "class_means", "centered_gram", "centered_fourth_moment", "class_sq_deviations",
        "class_scatters", "source_joint", "hard_source_joint",
    ):  # fmt: skip
        np.testing.assert_allclose(
            getattr(merged, attribute), getattr(one_pass, attribute), rtol=1e-10, atol=1e-9 * max(1.0, offset**2),
            err_msg=attribute,
        )  # fmt: skip
    np.testing.assert_array_equal(merged.classes, one_pass.classes)
    # LogME is not translation invariant: with an offset its value is defined to ~1e-7 only (see below)
    for name, params in STREAMABLE if not offset else [(n, p) for n, p in STREAMABLE if n != "logme"]:
        np.testing.assert_allclose(
            score(name, stats=merged, **params), score(name, stats=one_pass, **params), rtol=RTOL, err_msg=name
        )


def test_merge_into_an_empty_accumulator_and_of_an_empty_one():
    features, labels, probs = dataset("tall")
    full = _accumulate(features, labels, probs, range(labels.size)).finalize()
    merged = StreamingStatistics().merge(StreamingStatistics()).merge(
        _accumulate(features, labels, probs, range(labels.size))
    )
    np.testing.assert_allclose(merged.finalize().centered_gram, full.centered_gram, rtol=1e-12)
    assert merged.merge(StreamingStatistics()).n_samples == labels.size


def test_merge_refuses_accumulators_that_do_not_fit():
    features, labels, probs = dataset("tall")
    with_probs = _accumulate(features, labels, probs, range(50))
    without = _accumulate(features, labels, None, range(50, 100))
    with pytest.raises(ValueError, match="both saw source_probs"):
        with_probs.merge(without)
    with pytest.raises(ValueError, match="same configuration"):
        with_probs.merge(StreamingStatistics(class_scatter=True))
    narrow = _accumulate(features[:, :5], labels, None, range(50))
    with pytest.raises(ValueError, match="5 features per row"):
        without.merge(narrow)
