"""A ranking with a calibration: fused order, predicted accuracy with its interval, p_best (real tiny backbones)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from service.errors import InvalidCalibration  # noqa: E402
from service.pipeline.calibration.model import AccuracyModel, Calibration, Fusion, fused_scores  # noqa: E402
from service.pipeline.features.cache import FeatureCache  # noqa: E402
from service.pipeline.ranking import rank as rank_module  # noqa: E402
from service.pipeline.ranking.rank import rank_backbones  # noqa: E402

BACKBONES = ["random:test_resnet", "random:test_vit", "random:test_efficientnet"]
MODEL = AccuracyModel(("class_means",), (0.2, 1.1), (-0.4, 0.3), n_train=30)
CALIBRATION = Calibration(
    accuracy={"finetune": [MODEL], "linear_probe": None},
    fusion=Fusion(("class_means", "logme"), (1.0, 1.0), "zscore", {"class_means": True, "logme": True}),
    source={"results": []},
    created="2026-12-06T00:00:00Z",
)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    for c, kind in enumerate(("red", "green", "blue")):
        (root / kind).mkdir()
        for i in range(8):
            pixels = rng.integers(0, 90, (24, 24, 3), dtype=np.uint8)
            pixels[..., c] += np.uint8(120 + 10 * (i % 3))
            Image.fromarray(pixels).save(root / kind / f"{i}.png")
    return root


def _rank(folder: Path, cache_dir: Path, **kwargs):
    return rank_backbones(str(folder), BACKBONES, cache=FeatureCache(cache_dir), device="cpu", batch_size=32, **kwargs)


def test_calibrated_ranking_orders_by_fusion_and_predicts_accuracy(image_folder, tmp_path):
    kwargs = {"estimators": ["class_means", "logme", "sfda"], "calibration": CALIBRATION, "n_bootstrap": 12}
    result = _rank(image_folder, tmp_path, **kwargs)
    fusion = result["fusion"]
    assert fusion["method"] == "calibrated" and fusion["members"] == ["class_means", "logme"]
    assert fusion["calibration"]["loto"]["finetune_mae"] is None  # this hand-made calibration has no evaluation
    p_best = dict(fusion["p_best"])  # a copy: the report below validates the whole result, seconds included
    assert p_best.pop("seconds") > 0
    assert p_best == {"n_bootstrap": 12, "seed": 0, "resampling": "class-stratified half-samples"}
    rows = result["backbones"]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    expected = fused_scores([r["scores"] for r in rows], CALIBRATION.fusion)
    assert [r["fused_score"] for r in rows] == pytest.approx(list(expected))
    assert [r["fused_score"] for r in rows] == sorted((r["fused_score"] for r in rows), reverse=True)
    assert sum(r["p_best"] for r in rows) == pytest.approx(1.0)
    for row in rows:
        assert set(row["ranks"]) == {"class_means", "logme", "sfda"}  # per-estimator ranks are kept
        predicted = row["predicted_accuracy"]
        assert predicted["linear_probe"] is None
        assert predicted["finetune"] == {**MODEL.predict(3, row["scores"]), "inputs": ["class_means"]}
        assert 1 / 3 <= predicted["finetune"]["low"] <= predicted["finetune"]["value"] <= predicted["finetune"]["high"]
        assert row["source_accuracy"] is None  # random-init controls have no source task
    _check_report(result)
    events: list[tuple[str, str, int, int]] = []
    again = _rank(  # features from the cache: same resamples, same p_best
        image_folder, tmp_path, **kwargs, progress=lambda e: events.append((e.stage, e.backbone, e.done, e.total))
    )
    assert all(r["from_cache"] for r in again["backbones"])
    # after the extraction: one "score" event per backbone, then one "p_best" event per replicate
    assert [e for e in events if e[0] == "score"] == [("score", b, i, 3) for i, b in enumerate(BACKBONES, start=1)]
    assert [e for e in events if e[0] == "p_best"] == [("p_best", "*", r, 12) for r in range(1, 13)]
    assert events[-1][0] == "p_best" and {e[0] for e in events} == {"cached", "score", "p_best"}
    assert [(r["id"], r["p_best"]) for r in again["backbones"]] == [(r["id"], r["p_best"]) for r in rows]


def test_members_not_computed_are_left_out_and_no_member_falls_back_to_mean_rank(image_folder, tmp_path):
    only_logme = _rank(image_folder, tmp_path, estimators=["logme"], calibration=CALIBRATION, n_bootstrap=0)
    assert only_logme["fusion"]["members"] == ["logme"] and only_logme["fusion"]["p_best"] is None
    assert "left out): class_means" in only_logme["fusion"]["note"]
    assert all(r["predicted_accuracy"] is None and r["p_best"] is None for r in only_logme["backbones"])
    logme = [r["scores"]["logme"] for r in only_logme["backbones"]]
    assert logme == sorted(logme, reverse=True)
    fallback = _rank(image_folder, tmp_path, estimators=["sfda", "h_score"], calibration=CALIBRATION)
    assert fallback["fusion"]["method"] == "mean_rank"
    assert "none of the fusion's estimators" in fallback["fusion"]["note"]
    assert fallback["fusion"]["calibration"]["created"] == "2026-12-06T00:00:00Z"


def test_without_calibration_the_order_is_the_mean_rank(image_folder, tmp_path):
    result = _rank(image_folder, tmp_path, estimators=["class_means", "logme"], calibration=None)
    assert result["fusion"]["method"] == "mean_rank" and result["fusion"]["calibration"] is None
    rows = result["backbones"]
    assert [r["mean_rank"] for r in rows] == sorted(r["mean_rank"] for r in rows)
    assert all(r["fused_score"] is None and r["p_best"] is None and r["predicted_accuracy"] is None for r in rows)


def test_streamed_features_get_no_p_best_but_a_fused_order(image_folder, tmp_path):
    result = _rank(image_folder, tmp_path, estimators=["class_means", "logme"], calibration=CALIBRATION,
                   streaming=True, n_bootstrap=5)  # fmt: skip
    assert result["fusion"]["method"] == "calibrated" and "streamed features" in result["fusion"]["note"]
    assert all(r["p_best"] is None and r["fused_score"] is not None for r in result["backbones"])


def test_a_bad_calibration_path_fails_before_any_forward_pass(image_folder, tmp_path, monkeypatch):
    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted although the calibration file is bad")

    monkeypatch.setattr(rank_module, "extract_features", no_extraction)
    with pytest.raises(InvalidCalibration, match="does not exist"):
        _rank(image_folder, tmp_path, calibration=tmp_path / "missing.json")


def _check_report(result):
    """The ranking report shows the fused order, p(best) and the predicted accuracies with their intervals."""
    from service.reports import render_ranking_report
    from tests.reports.htmltools import parse, table_rows

    doc = parse(render_ranking_report(result))
    header, rows, nodes = table_rows(doc.find("table", id="prediction-table"))
    assert header == ["rank", "backbone", "fused", "p(best)", "fine-tune acc.", "linear-probe acc."]
    assert [node.attrs["data-backbone"] for node in nodes] == [b["id"] for b in result["backbones"]]
    for row, backbone in zip(rows, result["backbones"], strict=True):
        predicted = backbone["predicted_accuracy"]["finetune"]
        assert row[2] == f"{backbone['fused_score']:.2f}" and row[3] == f"{backbone['p_best']:.2f}"
        assert row[4] == f"{100 * predicted['value']:.1f} [{100 * predicted['low']:.1f}, {100 * predicted['high']:.1f}]"
        assert row[5] == "n/a"
    header, _, _ = table_rows(doc.find("table", id="ranking-table"))
    assert header == ["rank", "backbone", "mean rank", "top pick of", "dim", "weights", "time"]  # unchanged


def test_the_note_says_which_sample_size_the_predictions_are_for(image_folder, tmp_path):
    def evaluation(*per_class: float) -> dict:
        settings = [{"setting": f"s{v}", "images_per_class": v, "n": 11, "mae": 0.05} for v in per_class]
        return {"accuracy": {"finetune": {"per_setting": settings}, "linear_probe": None}}

    learned = dataclasses.replace(CALIBRATION, evaluation=evaluation(10.0, 20.0))
    assert learned.images_per_class() == [10.0, 20.0] and CALIBRATION.images_per_class() == []
    note = _rank(image_folder, tmp_path, estimators=["class_means", "logme"], calibration=learned)["fusion"]["note"]
    assert "as many images per class as were ranked (8); the calibration learned 10 and 20 per class" in note
    assert "extrapolate" not in note
    far = dataclasses.replace(CALIBRATION, evaluation=evaluation(40.0))
    note = _rank(image_folder, tmp_path, estimators=["class_means", "logme"], calibration=far)["fusion"]["note"]
    assert note.endswith("the calibration learned 40 per class, so here they extrapolate")


def test_the_note_says_whether_the_zoo_ranked_is_the_one_the_calibration_was_fitted_with():
    from service.pipeline.ranking.fusion import _zoo_note

    fitted = {"zoo:a": {"weights_sha256": "a" * 64}, "zoo:b": {"weights_sha256": "b" * 64}}
    calibration = dataclasses.replace(CALIBRATION, source={"results": [], "zoo": {"models": fitted, "note": None}})
    rows = [{"id": "zoo:a", "weights_sha256": "a" * 64}, {"id": "random:x", "weights_sha256": None}]
    same = "; the zoo models ranked here (1) are the builds the calibration was fitted with (weights sha256 match)"
    assert _zoo_note(calibration, rows) == same
    rows.append({"id": "zoo:b", "weights_sha256": "c" * 64})
    assert _zoo_note(calibration, rows) == (
        "; zoo:b in use differs from the zoo the calibration was fitted with (weights sha256 cccccccccccc… vs "
        "bbbbbbbbbbbb…): predicted accuracies may be off"
    )
    unrecorded = dataclasses.replace(calibration, source={"zoo": {"models": {"zoo:a": {"weights_sha256": None}}}})
    assert _zoo_note(unrecorded, rows) == (
        "; whether zoo:a are the builds the calibration was fitted with is unknown (it records no weights sha256 "
        "for them)"
    )
    assert _zoo_note(CALIBRATION, rows) == ""  # a calibration that names no zoo: nothing to compare


def _as_benchmark(ranking: dict) -> dict:
    """The ranking's scores laid out as a benchmark records them (priors among the scores, by member name)."""
    rows = [
        {
            "id": row["id"],
            "scores": {
                **row["scores"],
                "source_accuracy": row["source_accuracy"],
                "model_size": row["params_m"],
                "imagenet_top1": row["imagenet_top1"],
            },
        }
        for row in reversed(ranking["backbones"])  # another order than the ranking's: the columns must not depend on it
    ]
    target = {"name": "blobs", "n_classes": 3, "n_rank_images": ranking["dataset"]["n_images"], "backbones": rows}
    return {"estimators": ranking["estimators"], "targets": [target]}


@pytest.mark.parametrize("calibration", [CALIBRATION, None], ids=["calibrated", "mean-rank"])
def test_a_benchmarks_default_column_is_the_score_rank_orders_by(image_folder, tmp_path, calibration):
    from service.pipeline.benchmark.default_order import add_default_order

    ranking = _rank(image_folder, tmp_path, estimators=["class_means", "logme", "sfda"], calibration=calibration)
    benchmark = add_default_order(_as_benchmark(ranking), calibration)
    by_id = {row["id"]: row for row in benchmark["targets"][0]["backbones"]}
    for row in ranking["backbones"]:
        expected = row["fused_score"] if calibration is not None else -row["mean_rank"]
        assert by_id[row["id"]]["default"] == pytest.approx(expected, rel=1e-12)
        assert by_id[row["id"]]["predicted_accuracy"] == row["predicted_accuracy"]
    defaults = [by_id[row["id"]]["default"] for row in ranking["backbones"]]  # the ranking's order, best first
    assert defaults == sorted(defaults, reverse=True)
    order = benchmark["targets"][0]["default_order"]
    fusion = ranking["fusion"]
    assert {k: order[k] for k in ("method", "members", "weights", "normalisation")} == {
        k: fusion[k] for k in ("method", "members", "weights", "normalisation")
    }
    described = benchmark["default_order"]["calibration"]
    assert described == fusion["calibration"]  # the same description of the same calibration
    assert benchmark["default_order"]["fusion"] == (None if calibration is None else calibration.fusion.to_dict())
