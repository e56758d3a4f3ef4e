"""The torch backend gives the numpy backend's values (1e-6 relative) for every estimator; torch stays optional."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from estimators import Statistics, StreamingStatistics, list_estimators, score, use_backend
from estimators._backend import NumpyBackend, get_backend

RTOL = 1e-6

#: Non-default parameters worth running on both backends (they take other linear-algebra paths).
EXTRA_CONFIGS = [
    ("logme", {"algorithm": "icml"}),
    ("gbc", {"pca_dim": 5}),
    ("gbc", {"pca_dim": 5, "gaussian_type": "diagonal"}),
    ("sfda", {"shrinkage": 0.1}),
    ("lda", {"shrinkage": 0.1}),
    ("class_means", {"output": "loglik"}),
    ("transrate", {"eps": 1e-2}),
]


@functools.cache
def dataset(key: str):
    rng = np.random.default_rng({"tall": 0, "relu": 1, "wide": 2}[key])
    n, d, c = {"tall": (240, 12, 4), "relu": (200, 24, 3), "wide": (30, 40, 3)}[key]
    labels = np.arange(n) % c
    features = rng.normal(size=(n, d)) + 1.0 * rng.normal(size=(c, d))[labels]
    if key == "relu":
        features = np.maximum(features + 1.0, 0.0) * 1.5
    return features, labels, rng.dirichlet(np.full(6, 0.5), size=n)


#: The estimators whose heavy parts run on the backend (Gram, eigh, solves, N x D products).
BACKEND_USERS = ["logme", "h_score", "shrinkage_h_score", "gbc", "transrate", "sfda", "lda", "class_means"]


def _compare(reference: Statistics, other: Statistics, configs, rtol: float = RTOL) -> None:
    for name, params in configs:
        expected = score(name, stats=reference, **params)
        got = score(name, stats=other, **params)
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-12, err_msg=f"{name} {params}")


def _torch_pair(key: str) -> tuple[Statistics, Statistics]:
    pytest.importorskip("torch")
    features, labels, probs = dataset(key)
    numpy_stats = Statistics(features, labels, source_probs=probs)
    torch_stats = Statistics(features, labels, source_probs=probs, backend="torch", device="cpu")
    assert torch_stats.backend.name == "torch" and torch_stats.backend.device == "cpu"
    return numpy_stats, torch_stats


def test_torch_cpu_equals_numpy_for_every_registered_estimator():
    numpy_stats, torch_stats = _torch_pair("tall")
    _compare(numpy_stats, torch_stats, [(info.name, {}) for info in list_estimators()] + EXTRA_CONFIGS)
    # the heavy intermediates themselves, not only the scores
    np.testing.assert_allclose(torch_stats.centered_gram, numpy_stats.centered_gram, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(torch_stats.centered_gram_eigh[0], numpy_stats.centered_gram_eigh[0], atol=1e-9)


@pytest.mark.parametrize("key", ["relu", "wide"])
def test_torch_cpu_equals_numpy_on_relu_and_wide_features(key):
    """Non-negative features with a large mean, and D > N (LogME and TransRate take the N x N kernel)."""
    numpy_stats, torch_stats = _torch_pair(key)
    _compare(numpy_stats, torch_stats, [(name, {}) for name in BACKEND_USERS] + EXTRA_CONFIGS)


def test_logme_regression_and_the_module_default_on_torch():
    pytest.importorskip("torch")
    features, labels, _ = dataset("tall")
    targets = features @ np.linspace(-1, 1, features.shape[1]) + labels
    expected = score("logme", features, targets, regression=True)
    with use_backend("torch", device="cpu"):
        assert Statistics(features, labels).backend.name == "torch"
        got = score("logme", features, targets, regression=True)  # built inside score: the default applies
    assert Statistics(features, labels).backend.name == "numpy"  # restored
    np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_streaming_on_torch_equals_numpy_in_memory():
    pytest.importorskip("torch")
    features, labels, probs = dataset("relu")
    stream = StreamingStatistics(class_scatter=True, backend="torch", device="cpu")
    for start in range(0, labels.size, 17):
        rows = slice(start, start + 17)
        stream.update(features[rows], labels[rows], probs[rows])
    streamed = stream.finalize()
    assert streamed.backend.name == "torch"
    memory = Statistics(features, labels, source_probs=probs)
    for name in ("logme", "h_score", "shrinkage_h_score", "gbc", "transrate", "nce"):
        np.testing.assert_allclose(score(name, stats=streamed), score(name, stats=memory), rtol=1e-8, err_msg=name)


def test_bad_backend_or_device_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        Statistics(np.eye(4), [0, 0, 1, 1], backend="jax")
    with pytest.raises(ValueError, match="CPU only"):
        get_backend("numpy", "cuda")
    with pytest.raises(ValueError, match="unknown backend"), use_backend("cupy"):
        pass
    assert isinstance(get_backend(), NumpyBackend)


def test_cuda_request_without_a_gpu_is_a_clear_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="no CUDA device"):
        Statistics(np.eye(4), [0, 0, 1, 1], backend="torch", device="cuda")


def test_estimators_import_and_work_without_torch():
    """torch is optional: with its import blocked, estimators imports, scores, and explains the torch backend."""
    code = textwrap.dedent(
        """
        import sys

        class NoTorch:  # behaves as if torch were not installed: `import torch` raises ModuleNotFoundError
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        import estimators
        from estimators import Statistics, StreamingStatistics, list_estimators, score
        rng = np.random.default_rng(0)
        y = np.arange(60) % 3
        F = rng.normal(size=(60, 6)) + y[:, None]
        probs = rng.dirichlet(np.ones(4), size=60)
        values = {i.name: score(i.name, F, y, source_probs=probs) for i in list_estimators()}
        assert all(np.isfinite(v) for v in values.values()), values
        streamed = StreamingStatistics().update(F, y).finalize()
        assert abs(score("logme", stats=streamed) - values["logme"]) < 1e-9 * abs(values["logme"])
        try:
            Statistics(F, y, backend="torch")
        except ValueError as err:
            assert "pip install torch" in str(err), err
        else:
            raise AssertionError("backend='torch' worked without torch")
        assert "torch" not in sys.modules
        print("ok", len(values))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


@pytest.mark.gpu
@pytest.mark.parametrize("key", ["tall", "relu", "wide"])
def test_torch_cuda_equals_numpy_for_every_estimator(key):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    features, labels, probs = dataset(key)
    cuda_stats = Statistics(features, labels, source_probs=probs, backend="torch", device="cuda")
    assert cuda_stats.backend.device.startswith("cuda")
    configs = [(info.name, {}) for info in list_estimators()] + EXTRA_CONFIGS
    _compare(Statistics(features, labels, source_probs=probs), cuda_stats, configs)
    stream = StreamingStatistics(class_scatter=True, backend="torch", device="cuda")
    for start in range(0, labels.size, 32):
        stream.update(features[start : start + 32], labels[start : start + 32], probs[start : start + 32])
    streamed = stream.finalize()
    memory = Statistics(features, labels, source_probs=probs)
    for name in ("logme", "h_score", "shrinkage_h_score", "gbc", "transrate", "nce"):
        np.testing.assert_allclose(score(name, stats=streamed), score(name, stats=memory), rtol=RTOL, err_msg=name)
