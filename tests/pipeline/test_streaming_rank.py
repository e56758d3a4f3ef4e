"""Streaming extraction: images -> batches -> StreamingStatistics, never the (N, D) features."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from estimators import Statistics, score  # noqa: E402
from service.errors import TooFewSamplesPerClass  # noqa: E402
from service.pipeline.data.datasets import load_dataset  # noqa: E402
from service.pipeline.features.cache import FeatureCache  # noqa: E402
from service.pipeline.features.extract import extract_features  # noqa: E402
from service.pipeline.models.backbones import load_backbone  # noqa: E402
from service.pipeline.ranking.rank import rank_backbones  # noqa: E402

CLASSES = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
MOMENT_BASED = ("logme", "h_score", "shrinkage_h_score", "gbc", "transrate", "nce")
SAMPLE_BASED = ("knn", "linear_probe", "ridge_probe", "lda", "sfda", "class_means", "leep")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of noisy tinted 32 px images (10 each), written by the test."""
    root = tmp_path_factory.mktemp("tinted")
    rng = np.random.default_rng(0)
    for name, tint in CLASSES.items():
        (root / name).mkdir()
        for i in range(10):
            noise = rng.integers(0, 90, (32, 32, 3))
            pixels = np.clip(np.asarray(tint) * rng.uniform(0.6, 1.0) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")
    return root


def test_streamed_feature_sets_carry_statistics_equal_to_the_in_memory_ones(folder):
    dataset = load_dataset(str(folder))
    backbones = [load_backbone("random:test_resnet"), load_backbone("random:test_vit")]
    in_memory = extract_features(dataset, backbones, device="cpu", batch_size=7)
    streamed = extract_features(dataset, backbones, device="cpu", batch_size=7, streaming=True)
    for kept, fs in zip(in_memory, streamed, strict=True):
        assert fs.features is None and fs.source_probs is None
        assert fs.stats is not None and fs.stats.streamed and fs.stats.has_source_probs
        assert fs.dim == kept.dim and fs.stats.n_samples == len(dataset) == fs.n_images
        np.testing.assert_array_equal(fs.labels, kept.labels)
        memory = Statistics(kept.features, kept.labels, source_probs=kept.source_probs)
        for name in MOMENT_BASED:
            np.testing.assert_allclose(score(name, stats=fs.stats), score(name, stats=memory), rtol=1e-8, err_msg=name)


def test_streaming_rank_scores_moment_estimators_and_explains_the_others(folder, tmp_path):
    specs = ["random:test_resnet", "random:test_vit"]
    cache = FeatureCache(tmp_path / "cache")
    names = [*MOMENT_BASED, *SAMPLE_BASED]
    reference = rank_backbones(str(folder), specs, estimators=names, device="cpu", batch_size=8)
    result = rank_backbones(
        str(folder), specs, estimators=names, device="cpu", batch_size=8, streaming=True, cache=cache
    )
    expected = {row["id"]: row for row in reference["backbones"]}
    assert [row["rank"] for row in result["backbones"]] == [1, 2]
    for row in result["backbones"]:
        assert row["n_images"] == 30 and row["feature_dim"] == expected[row["id"]]["feature_dim"]
        for name in MOMENT_BASED:
            assert row["scores"][name] == pytest.approx(expected[row["id"]]["scores"][name], rel=1e-8), name
            assert row["ranks"][name] is not None and name not in row["unscored"]
        for name in SAMPLE_BASED:
            assert row["scores"][name] is None and row["ranks"][name] is None
            assert f"estimator '{name}' cannot run on streamed statistics" in row["unscored"][name]
    # the non-streaming result scores everything and has nothing to explain
    assert all(row["unscored"] == {} for row in reference["backbones"])
    assert all(v is not None for row in reference["backbones"] for v in row["scores"].values())
    # the fused rank is the mean over the estimators that apply, with the same per-estimator ranks as in memory
    for row in result["backbones"]:
        ranks = [row["ranks"][name] for name in MOMENT_BASED]
        assert ranks == [expected[row["id"]]["ranks"][name] for name in MOMENT_BASED]
        assert row["mean_rank"] == pytest.approx(np.mean(ranks))
    assert cache.size_bytes() == 0  # nothing cached: streaming keeps no features to store


def test_headless_streaming_says_why_the_source_head_scores_are_null(folder):
    result = rank_backbones(str(folder), ["random:test_resnet"], layer=1, device="cpu", streaming=True)
    (row,) = result["backbones"]
    for name in ("leep", "nce"):
        assert row["scores"][name] is None and "no classifier head" in row["unscored"][name]
    assert np.isfinite(row["scores"]["logme"]) and "logme" not in row["unscored"]


def test_streaming_still_reports_a_class_left_too_small(folder, tmp_path):
    """A class with a single image: the streamed statistics cannot be formed, the usual error is raised."""
    small = tmp_path / "small"
    for name in CLASSES:
        (small / name).mkdir(parents=True)
        for source in sorted((folder / name).iterdir())[: 1 if name == "blue" else 4]:
            (small / name / source.name).write_bytes(source.read_bytes())
    dataset = load_dataset(str(small), min_per_class=1)
    (fs,) = extract_features(dataset, [load_backbone("random:test_resnet")], device="cpu", streaming=True)
    assert fs.stats is None and fs.features is None and fs.n_images == 9
    with pytest.raises(TooFewSamplesPerClass, match="blue"):
        rank_backbones(dataset, ["random:test_resnet"], estimators=["logme"], device="cpu", streaming=True)
