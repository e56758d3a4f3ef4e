"""The product's orders in a benchmark summary, the p(best) check and the ground-truth disagreement flag, on
hand-made results (numbers, no features); re-summarising a recorded result from the command line."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.contract import BenchmarkResult
from service.pipeline.benchmark.checks import ground_truth_flags, p_best_check
from service.pipeline.benchmark.default_order import add_default_order, resummarize
from service.pipeline.benchmark.metrics import target_metrics
from service.pipeline.benchmark.results import summarize, write_result_files
from service.pipeline.calibration.model import AccuracyModel, Calibration, Fusion, fused_scores

ROOT = Path(__file__).resolve().parents[2]
CALIBRATION = Calibration(
    accuracy={"finetune": [AccuracyModel(("good",), (0.1, 1.0), (-0.3, 0.3), n_train=20)], "linear_probe": None},
    fusion=Fusion(("good", "source_accuracy"), (2.0, 1.0), "zscore", {"good": True, "source_accuracy": True}),
    source={"results": []},
    created="2026-12-01T00:00:00Z",
)


def _row(backbone: str, finetune: float, probe: float | None = None, **extra: object) -> dict:
    return {
        "id": backbone,
        "scores": {"good": finetune - 0.05, "bad": -finetune, "source_accuracy": 0.5, "feature_dim": 64.0},
        "accuracy": {"mean": finetune, "std": 0.0, "per_seed": [finetune]},
        "linear_probe_accuracy": probe,
        "finetune": {"strategy": "full"},
        "seconds": {"rank": 1.0, "finetune": 10.0},
        **extra,
    }


def _result(*targets: list[dict]) -> dict:
    return {
        "estimators": [
            {"name": "good", "higher_is_better": True, "reference": "tracks the accuracy"},
            {"name": "bad", "higher_is_better": True, "reference": "tracks it backwards"},
        ],
        "baselines": [
            {"name": "source_accuracy", "higher_is_better": True},
            {"name": "feature_dim", "higher_is_better": True},
        ],
        "targets": [
            {
                "name": f"t{i}",
                "dataset": f"builtin:t{i}",
                "relation": "",
                "n_classes": 4,
                "n_rank_images": 40,
                "n_test_images": 40,
                "backbones": rows,
            }
            for i, rows in enumerate(targets)
        ],
    }


def _three(offset: float = 0.0) -> list[dict]:
    return [_row("a", 0.8 + offset), _row("b", 0.6 + offset), _row("c", 0.4 + offset)]


# ------------------------------------------------------------------------------------------ product methods


def test_the_default_order_is_a_method_of_the_summary_and_a_column_of_the_csv(tmp_path):
    result = add_default_order(_result(_three(), _three(0.05)), CALIBRATION)
    rows = result["targets"][0]["backbones"]
    # source_accuracy is a member but constant here: standardised to 0, so the order is the good score's
    expected = fused_scores([r["scores"] for r in rows], CALIBRATION.fusion)
    assert [r["default"] for r in rows] == pytest.approx(list(expected))
    assert [r["predicted_accuracy"]["finetune"]["inputs"] for r in rows] == [["good"]] * 3
    assert result["targets"][0]["default_order"] == {
        "method": "calibrated",
        "members": ["good", "source_accuracy"],
        "weights": [2.0, 1.0],
        "normalisation": "zscore",
        "note": "ordered by the calibrated fusion",
    }
    summarize(result, n_bootstrap=50)
    summary = result["summary"]
    assert list(summary)[:2] == ["default", "predicted_accuracy"]  # the product's orders first
    assert summary["default"]["is_product"] and not summary["default"]["is_baseline"]
    assert not summary["good"]["is_product"]
    assert summary["default"]["weighted_tau"]["mean"] == pytest.approx(1.0)
    assert summary["default"]["top1_regret"]["mean"] == 0.0
    # the same metrics as an estimator with these scores gets, intervals included
    manual = target_metrics([r["default"] for r in rows], [r["accuracy"]["per_seed"] for r in rows], n_bootstrap=50)
    assert result["targets"][0]["metrics"]["default"] == manual
    assert result["p_best_check"] is None  # not run
    assert result["ground_truth_flags"] == []  # no linear probe recorded: nothing to compare
    typed = BenchmarkResult.model_validate(
        {**result, "kind": "benchmark", "suite": _SUITE, "created": "x", "environment": {}, "skipped": {}}
    )
    assert typed.summary["default"].is_product and typed.default_order is not None
    assert (
        typed.default_order.calibration is not None and typed.default_order.calibration.created == CALIBRATION.created
    )

    paths = write_result_files(result, tmp_path / "r.json")
    with paths["csv"].open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0])[6:9] == ["default", "predicted_accuracy", "good"]
    assert [float(line["default"]) for line in table[:3]] == pytest.approx([r["default"] for r in rows])
    assert float(table[0]["predicted_accuracy"]) == pytest.approx(rows[0]["predicted_accuracy"]["finetune"]["value"])


_SUITE = {"name": "hand", "description": "", "ground_truth": "finetune", "fingerprint": "f", "definition": {}}


def test_without_a_calibration_the_default_is_minus_the_mean_rank():
    result = add_default_order(_result(_three()), None)
    rows = result["targets"][0]["backbones"]
    # good ranks a, b, c; bad (higher is better: -accuracy) ranks c, b, a: every mean rank is 2
    assert [r["default"] for r in rows] == [-2.0, -2.0, -2.0]
    assert all(r["predicted_accuracy"] is None for r in rows)
    assert result["default_order"]["calibration"] is None and result["default_order"]["fusion"] is None
    assert result["targets"][0]["default_order"]["method"] == "mean_rank"
    assert result["targets"][0]["default_order"]["note"].startswith("no calibration")


def test_a_result_without_the_default_order_summarises_as_before():
    result = summarize(_result(_three()), n_bootstrap=20)
    assert "default" not in result["summary"] and "default_order" not in result
    assert not any(entry["is_product"] for entry in result["summary"].values())


# ------------------------------------------------------------------------------------------ p(best)


def test_the_p_best_check_counts_confident_hits_misses_and_unconfident_targets():
    hit = [_row("a", 0.8, p_best=0.7), _row("b", 0.6, p_best=0.2), _row("c", 0.4, p_best=0.1)]
    miss = [_row("a", 0.8, p_best=0.1), _row("b", 0.6, p_best=0.6), _row("c", 0.4, p_best=0.3)]
    unsure = [_row("a", 0.8, p_best=0.4), _row("b", 0.6, p_best=0.35), _row("c", 0.4, p_best=0.25)]
    tie = [_row("a", 0.8, p_best=0.5), _row("b", 0.8, p_best=0.0), _row("c", 0.4, p_best=0.5)]
    result = _result(hit, miss, unsure, tie, _three())  # the last target ran no p_best: not counted
    for target in result["targets"][:4]:
        target["p_best"] = {"n_bootstrap": 20, "seed": 0, "resampling": "class-stratified half-samples", "seconds": 1.5}
    # the tie of p_best 0.5 goes to the higher default score: c
    for row, value in zip(tie, (1.0, 0.0, 2.0), strict=True):
        row["default"] = value
    check = p_best_check(result)
    assert check is not None
    assert {k: v for k, v in check.items() if k != "per_target"} == {
        "n_bootstrap": 20,
        "n_targets": 4,
        "n_confident": 3,  # hit, miss and tie
        "n_confident_best": 1,
        "n_unconfident": 1,
        "n_top_best": 2,  # hit, and unsure (a has the highest p although below 0.5)
        "mean_top_p_best": pytest.approx((0.7 + 0.6 + 0.4 + 0.5) / 4),
        "mean_p_best_of_best": pytest.approx((0.7 + 0.1 + 0.4 + 0.5) / 4),  # tie: a and b are both best
        "seconds": 6.0,
    }
    assert [(t["target"], t["top"], t["best"], t["top_is_best"]) for t in check["per_target"]] == [
        ("t0", "a", ["a"], True),
        ("t1", "b", ["a"], False),
        ("t2", "a", ["a"], True),
        ("t3", "c", ["a", "b"], False),
    ]
    assert p_best_check(_result(_three())) is None


# ------------------------------------------------------------------------------------------ ground truths


def _control_target() -> list[dict]:
    """The issue's example: a random-init control that probes best (0.72) and fine-tunes worst (0.14)."""
    return [
        _row("zoo:random-resnet10t", 0.14, 0.72),
        _row("zoo:latin-resnet10t", 0.70, 0.60),
        _row("zoo:shapes-resnet10t", 0.50, 0.45),
        _row("zoo:textures-resnet10t", 0.40, 0.42),
    ]


def test_a_pick_good_by_linear_probe_and_bad_after_fine_tuning_is_flagged_in_words():
    flags = ground_truth_flags(_result(_control_target()))
    assert [f["backbone"] for f in flags] == ["zoo:random-resnet10t", "zoo:latin-resnet10t"]
    control = flags[0]
    assert control["message"] == (
        "zoo:random-resnet10t on t0 (best by linear probe): best by linear probe (0.72) but worst after full "
        "fine-tuning (0.14): which backbone is best depends on how you transfer"
    )
    assert (control["linear_probe_rank"], control["finetune_rank"], control["n_backbones"]) == (1.0, 4.0, 4)
    assert control["finetune_gap"] == pytest.approx(0.56) and control["linear_probe_gap"] == 0.0
    # the best after fine-tuning is 0.12 behind the control by linear probe: a gap shift above 0.10
    assert flags[1]["message"].startswith(
        "zoo:latin-resnet10t on t0 (best by fine-tuning): best after full fine-tuning (0.70) but rank 2 of 4 by "
        "linear probe (0.60; best 0.72)"
    )


def test_the_default_pick_is_checked_too_and_agreement_is_not_flagged():
    agree = [_row("a", 0.80, 0.75), _row("b", 0.60, 0.58), _row("c", 0.40, 0.30)]
    result = _result(agree)
    assert ground_truth_flags(result) == []
    # the default picks c, last under both ground truths: bad under both is no disagreement
    for row, value in zip(agree, (0.0, 1.0, 2.0), strict=True):
        row["default"] = value
    assert ground_truth_flags(result) == []
    # the default picks b: 0.02 behind by probe (close), 0.20 behind after fine-tuning: flagged as the default's pick
    agree[1]["linear_probe_accuracy"] = 0.73
    agree[1]["default"] = 3.0
    [flag] = ground_truth_flags(result)
    assert flag["backbone"] == "b" and flag["roles"] == ["the default's pick"]
    assert flag["message"].startswith(
        "b on t0 (the default's pick): rank 2 of 3 by linear probe (0.73; best 0.75) but rank 2 of 3 after full "
        "fine-tuning (0.60; best 0.80): "
    )


def test_near_ties_that_only_reshuffle_are_not_flagged():
    # ten backbones within 3 points: the probe's best is the fine-tune's 9th, but nothing is far from the best
    rows = [_row(f"b{i}", 0.70 - 0.003 * i, 0.60 - 0.003 * ((i + 2) % 10)) for i in range(10)]
    assert ground_truth_flags(_result(rows)) == []
    # the same reshuffle with a 0.06 gap is flagged by the rank rule
    rows[8]["accuracy"] = {"mean": 0.64, "std": 0.0, "per_seed": [0.64]}
    rows[8]["linear_probe_accuracy"] = 0.61
    [flag] = ground_truth_flags(_result(rows))
    assert flag["backbone"] == "b8" and flag["finetune_rank"] == 10.0 and flag["linear_probe_rank"] == 1.0


# ------------------------------------------------------------------------------------------ recorded results


def test_resummarize_scores_a_recorded_result_without_changing_its_estimators(tmp_path):
    recorded = summarize(_result(_three(), _three(0.1), _control_target()), n_bootstrap=30)
    before = copy.deepcopy(recorded["summary"])
    again = resummarize(copy.deepcopy(recorded), CALIBRATION, n_bootstrap=30)
    assert {k: v for k, v in again["summary"].items() if k not in ("default", "predicted_accuracy")} == before
    assert again["summary"]["default"]["is_product"] and again["default_order"]["calibration"] is not None
    assert [f["backbone"] for f in again["ground_truth_flags"]] == ["zoo:random-resnet10t", "zoo:latin-resnet10t"]


def test_the_resummarize_command_rewrites_a_recorded_result_and_its_report(tmp_path):
    document = {
        **summarize(_result(_three(), _three(0.1), _control_target()), n_bootstrap=0),
        "schema_version": 2,
        "kind": "benchmark",
        "request": None,
        "suite": _SUITE,
        "created": "2026-12-01T00:00:00Z",
        "environment": {"fingerprint": "cpu-x"},
        "skipped": {"backbones": [], "targets": []},
    }
    path = tmp_path / "recorded.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    env = {**os.environ, "BACKBONE_RANK_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "service.cli", "resummarize", str(path), "--calibration", "none", "--bootstrap", "0",
            "-o", str(tmp_path / "out.json")]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "default" in proc.stdout and "no calibration (mean rank)" in proc.stdout
    assert "ground truths disagree" in proc.stdout and "zoo:random-resnet10t" in proc.stdout
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["summary"]["default"]["is_product"] and written["default_order"]["calibration"] is None
    assert "default" in (tmp_path / "out.csv").read_text().splitlines()[0].split(",")
    html = (tmp_path / "out.html").read_text()
    assert "which backbone is best depends on how you transfer" in html
    assert json.loads(path.read_text()) == document  # -o leaves the recorded file alone
    bad = subprocess.run(
        [sys.executable, "-m", "service.cli", "resummarize", str(tmp_path / "out.csv")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "cannot read" in bad.stderr
