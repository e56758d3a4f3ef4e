"""Layer scores: every stage from one forward pass, equal to one extraction per layer, and the advice read off them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.contract import RankingRequest, RankingResult
from service.pipeline.data.datasets import load_dataset
from service.pipeline.features.cache import FeatureCache
from service.pipeline.features.extract import FeatureSet, StageFeatures, extract_features
from service.pipeline.models.backbones import load_backbone
from service.pipeline.ranking.layers import freeze_depth, layer_report
from service.pipeline.ranking.rank import rank_backbones

BACKBONES = ("random:test_resnet", "random:test_vit")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of 6 noisy images each, told apart by their mean colour."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for c, colour in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
        (root / f"class{c}").mkdir()
        for i in range(6):
            pixels = np.clip(rng.normal(colour, 40, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("backbone_id", BACKBONES)
def test_one_pass_gives_every_stage_equal_to_one_extraction_per_layer(folder, backbone_id):
    dataset = load_dataset(str(folder))
    backbone = load_backbone(backbone_id)
    (all_stages,) = extract_features(dataset, [backbone], device="cpu", batch_size=7, stages=True)
    (plain,) = extract_features(dataset, [backbone], device="cpu", batch_size=7)
    modules = backbone.stage_modules()
    assert len(modules) >= 4 and [s.module for s in all_stages.stages] == modules
    assert [s.index for s in all_stages.stages] == list(range(len(modules)))
    # the pre-logits and source head of the same pass are the plain extraction's
    np.testing.assert_allclose(all_stages.features, plain.features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(all_stages.source_probs, plain.source_probs, rtol=1e-5, atol=1e-7)
    for stage in all_stages.stages:
        (single,) = extract_features(dataset, [backbone], device="cpu", batch_size=7, layer=stage.index)
        assert stage.features.shape == single.features.shape
        np.testing.assert_allclose(stage.features, single.features, rtol=1e-5, atol=1e-6)


def test_stages_are_cached_under_the_single_layer_keys(folder, tmp_path):
    dataset = load_dataset(str(folder))
    backbone = load_backbone("random:test_resnet")
    cache = FeatureCache(tmp_path / "cache")
    (first,) = extract_features(dataset, [backbone], device="cpu", cache=cache, stages=True)
    assert not first.from_cache
    (single,) = extract_features(dataset, [backbone], device="cpu", cache=cache, layer=2)
    assert single.from_cache
    np.testing.assert_array_equal(single.features, first.stages[2].features)
    (again,) = extract_features(dataset, [backbone], device="cpu", cache=cache, stages=True)
    assert again.from_cache and [s.module for s in again.stages] == [s.module for s in first.stages]
    for cached, computed in zip(again.stages, first.stages, strict=True):
        np.testing.assert_array_equal(cached.features, computed.features)
    # the pre-logits alone were cached too, but not every stage: a stages run must not take them for a hit
    other = FeatureCache(tmp_path / "other")
    extract_features(dataset, [backbone], device="cpu", cache=other)
    (recomputed,) = extract_features(dataset, [backbone], device="cpu", cache=other, stages=True)
    assert not recomputed.from_cache and len(recomputed.stages) == len(first.stages)


def test_stages_refuse_a_single_layer_or_streaming(folder):
    dataset = load_dataset(str(folder))
    backbone = load_backbone("random:test_resnet")
    for options in ({"layer": 1}, {"streaming": True}):
        with pytest.raises(ValueError, match="stages=True"):
            extract_features(dataset, [backbone], device="cpu", stages=True, **options)
    dataset_spec = {"kind": "folder", "path": "/data"}
    with pytest.raises(ValidationError, match="leave 'layer' out"):
        RankingRequest(dataset=dataset_spec, backbones=["random:test_resnet"], layer_scores=True, layer=1)
    with pytest.raises(ValidationError, match="cannot stream"):
        RankingRequest(dataset=dataset_spec, backbones=["random:test_resnet"], layer_scores=True, streaming=True)


def test_freeze_depth_is_the_earliest_layer_within_one_standard_error_of_the_best():
    # best 0.64 over 200 images: standard error sqrt(0.64 * 0.36 / 200) = 0.0339, so 0.62 counts as as good
    assert freeze_depth([0.30, 0.50, 0.62, 0.64, 0.64], 200) == (3, 2)
    # with 20000 images the same 0.02 is told apart: freeze up to the best
    assert freeze_depth([0.30, 0.50, 0.62, 0.64, 0.64], 20000) == (3, 3)
    assert freeze_depth([None, 0.5, None], 10) == (1, 1)
    with pytest.raises(ValueError, match="no layer"):
        freeze_depth([None, None], 10)


def _synthetic_set(informative_stage: int, n_stages: int = 4, per_class: int = 30) -> FeatureSet:
    """Labels readable from one stage only; every other layer (pre-logits included) is noise."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), per_class)
    n = labels.size

    def noise() -> np.ndarray:
        return rng.normal(size=(n, 8)).astype(np.float32)

    stages = []
    for index in range(n_stages):
        features = noise()
        if index == informative_stage:
            features[np.arange(n), labels] += 6.0  # one direction per class
        stages.append(StageFeatures(index, f"stage{index}", features))
    return FeatureSet(
        backbone={"id": "synthetic"},
        features=noise(),
        labels=labels,
        indices=np.arange(n),
        source_probs=None,
        stages=stages,
    )


def test_advice_freezes_up_to_the_stage_that_reads_the_labels():
    report = layer_report(_synthetic_set(informative_stage=1))
    assert report is not None
    assert [layer["module"] for layer in report["layers"]] == ["stage0", "stage1", "stage2", "stage3", "pre_logits"]
    accuracies = [layer["scores"]["ridge_probe"] for layer in report["layers"]]
    assert accuracies[1] == 1.0 and max(accuracies[:1] + accuracies[2:]) < 0.7
    assert report["best_layer"] == "stage1" and report["freeze_stages"] == 2 and report["n_stages"] == 4
    assert report["advice"].startswith("freeze stages 1-2 (up to stage1) and fine-tune from stage2")
    assert all(layer["scores"]["logme"] is not None for layer in report["layers"])


def test_advice_is_a_new_head_when_the_last_stage_reads_best():
    report = layer_report(_synthetic_set(informative_stage=3))
    assert report is not None and report["freeze_stages"] == 4
    assert report["advice"] == "every stage transfers: train a new head on the frozen features"


def test_no_stages_gives_no_advice_but_says_why():
    feature_set = _synthetic_set(informative_stage=0)
    feature_set.stages = []
    report = layer_report(feature_set)
    assert report is not None and report["freeze_stages"] is None and report["advice"] is None
    assert "does not return its stages" in report["note"]
    feature_set.stages = None
    assert layer_report(feature_set) is None


def test_ranking_with_layer_scores_gives_every_row_its_layers(folder, tmp_path):
    from service.pipeline.engine import rank
    from service.pipeline.runtime import Runtime

    request = RankingRequest(
        dataset={"kind": "folder", "path": str(folder)},
        backbones=list(BACKBONES),
        estimators=["logme", "ridge_probe"],
        layer_scores=True,
        device="cpu",
        cache=False,
    )
    result = rank(
        request, Runtime(cache_dir=tmp_path / "cache", builtin_dir=tmp_path / "builtin", roots=[folder], device="cpu")
    )
    assert isinstance(result, RankingResult) and result.request.layer_scores is True
    for row in result.backbones:
        assert row.layers is not None and row.seconds.layers is not None
        assert len(row.layers.layers) == row.layers.n_stages + 1 and row.layers.layers[-1].module == "pre_logits"
        assert 1 <= (row.layers.freeze_stages or 0) <= row.layers.n_stages
        assert row.layers.best_layer in {layer.module for layer in row.layers.layers}
        # the pre-logits' ridge accuracy is the row's own ridge_probe score: the same features
        assert row.layers.layers[-1].scores["ridge_probe"] == pytest.approx(row.scores["ridge_probe"], abs=1e-12)
    # the HTML report shows the advice; a ranking without layer scores has no such section
    from service.reports.ranking import render_ranking_report

    page = render_ranking_report(result)
    assert 'id="layers-table"' in page and (result.backbones[0].layers.advice or "") in page
    plain = rank_backbones(str(folder), ["random:test_resnet"], estimators=["logme"], device="cpu")
    assert plain["backbones"][0]["layers"] is None and plain["backbones"][0]["seconds"]["layers"] is None
    assert 'id="layers-table"' not in render_ranking_report(plain)
