"""Predicted accuracy, fused ranking and p_best (service.pipeline.calibration): numbers, LOTO honesty,
files, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import weightedtau

from estimators import Statistics, score
from service.errors import InvalidCalibration
from service.pipeline.calibration import model as cal_model
from service.pipeline.calibration.evaluation import loto_evaluation
from service.pipeline.calibration.fit import fit_calibration
from service.pipeline.calibration.model import (
    DEFAULT_CALIBRATION_PATH,
    IMAGES_PER_CLASS,
    AccuracyModel,
    Fusion,
    from_logit,
    fused_scores,
    load_calibration,
    resolve_calibration,
    save_calibration,
    to_logit,
)
from service.pipeline.calibration.p_best import _half_sample, p_best, source_accuracy_of
from service.pipeline.calibration.samples import samples_from_results, zoo_hashes_of
from service.pipeline.calibration.selection import (
    _NEAR_TIE,
    COMMITTEE_RULES,
    FUSABLE_ESTIMATORS,
    CommitteeRule,
    _fusion_candidates,
    _residual_bounds,
    _select_fusion,
    family_of,
)

ESTIMATORS = ("class_means", "knn", "logme", "nce")


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def synthetic_result(n_targets: int = 4, n_backbones: int = 7, seed: int = 0) -> dict[str, Any]:
    """A benchmark result whose accuracies follow a latent backbone quality (the layout run_benchmark writes)."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(0.0, 1.2, n_backbones)
    targets = []
    for t in range(n_targets):
        n_classes = (5, 10, 20)[t % 3]
        chance = 1.0 / n_classes
        offset = float(rng.normal(0.0, 0.3))
        rows = []
        for b in range(n_backbones):
            q = quality[b] + float(rng.normal(0.0, 0.5))
            finetune = chance + (1 - chance) * _sigmoid(q + 0.8 + offset + float(rng.normal(0, 0.2)))
            per_seed = [float(finetune + d) for d in rng.normal(0.0, 0.004, 3)]
            rows.append(
                {
                    "id": f"zoo:b{b}",
                    "feature_dim": 64,
                    "source_accuracy": None,
                    "scores": {
                        "class_means": chance + (1 - chance) * _sigmoid(0.8 * q - 0.3 + float(rng.normal(0, 0.2))),
                        "knn": chance + (1 - chance) * _sigmoid(0.7 * q - 0.5 + float(rng.normal(0, 0.3))),
                        "logme": float(q + rng.normal(0.0, 0.8)),
                        "nce": float(rng.normal()),
                        "source_accuracy": None if b == 0 else float(0.5 + 0.1 * quality[b]),
                        "feature_dim": 64.0,
                    },
                    "accuracy": {"mean": float(np.mean(per_seed)), "std": 0.004, "per_seed": per_seed},
                    "linear_probe_accuracy": chance + (1 - chance) * _sigmoid(0.9 * q + 0.2 + offset),
                    "seconds": {"rank": 1.0, "per_estimator": {"class_means": 0.01, "knn": 0.02, "logme": 0.05}},
                }
            )
        targets.append({"name": f"t{t}", "n_classes": n_classes, "backbones": rows})
    return {
        "schema_version": 1,
        "kind": "benchmark",
        "suite": {"name": "synthetic"},
        "created": "2026-12-06T00:00:00Z",
        "environment": {"fingerprint": "cpu-test"},
        "estimators": [{"name": n, "higher_is_better": True, "reference": ""} for n in ESTIMATORS],
        "baselines": [
            {"name": "source_accuracy", "higher_is_better": True},
            {"name": "feature_dim", "higher_is_better": True},
            {"name": "random", "higher_is_better": True},
        ],
        "targets": targets,
    }


# ------------------------------------------------------------------------------------------ accuracy model


def test_prediction_and_interval_are_the_hand_computed_numbers():
    model = AccuracyModel(("class_means",), (0.0, 1.0), (-0.5, 0.5), n_train=10)
    # C = 5: chance 0.2; 0.6 is half-way from chance to 1 -> t = logit(0.5) = 0; back: 0.2 + 0.8 * sigmoid(d)
    predicted = model.predict(5, {"class_means": 0.6})
    assert predicted["value"] == pytest.approx(0.6, abs=1e-12)
    assert predicted["low"] == pytest.approx(0.2 + 0.8 * _sigmoid(-0.5), abs=1e-12)  # 0.50203
    assert predicted["high"] == pytest.approx(0.2 + 0.8 * _sigmoid(0.5), abs=1e-12)  # 0.69797
    shifted = AccuracyModel(("class_means",), (1.0, 2.0), (-0.2, 0.1), n_train=10).predict(2, {"class_means": 0.75})
    # C = 2: share (0.75 - 0.5) / 0.5 = 0.5 -> t = 0 -> 1 + 2 * 0 = 1 -> 0.5 + 0.5 * sigmoid(1)
    assert shifted["value"] == pytest.approx(0.5 + 0.5 * _sigmoid(1.0), abs=1e-12)
    assert from_logit(to_logit(0.37, 10), 10) == pytest.approx(0.37, abs=1e-12)


def test_interval_bounds_are_split_conformal_order_statistics():
    residuals = np.arange(1.0, 20.0)  # n = 19: floor(20 * 0.05) = 1st and ceil(20 * 0.95) = 19th smallest
    assert _residual_bounds(residuals) == (1.0, 19.0)
    residuals = np.arange(1.0, 40.0)  # n = 39: the 2nd and the 38th smallest
    assert _residual_bounds(residuals[::-1]) == (2.0, 38.0)


def test_intervals_contain_the_value_and_stay_between_chance_and_one():
    rng = np.random.default_rng(1)
    for _ in range(200):
        lo = float(rng.normal(0, 1))
        model = AccuracyModel(
            ("class_means", "knn"), tuple(rng.normal(0, 1, 3)), (lo, lo + float(rng.random())), n_train=5
        )
        n_classes = int(rng.integers(2, 50))
        out = model.predict(n_classes, {"class_means": float(rng.random()), "knn": float(rng.random())})
        assert 1.0 / n_classes <= out["low"] <= out["value"] <= out["high"] <= 1.0


def test_a_noise_free_relation_is_recovered_with_a_tiny_loto_error():
    rng = np.random.default_rng(2)
    result = synthetic_result(n_targets=4)
    for target in result["targets"]:
        c = target["n_classes"]
        for row in target["backbones"]:
            cm = float(rng.uniform(1.5 / c, 0.95))
            row["scores"]["class_means"] = cm
            exact = float(from_logit(0.5 + 1.5 * to_logit(cm, c), c))
            row["accuracy"] = {"mean": exact, "std": 0.0, "per_seed": [exact]}
    calibration = fit_calibration([result])
    model = calibration.accuracy["finetune"][0]
    if model.inputs == ("class_means",):
        assert model.coef == pytest.approx((0.5, 1.5), abs=0.05)  # the small ridge shrinks the slope a little
    assert calibration.evaluation["accuracy"]["finetune"]["overall"]["mae"] < 0.01


def test_the_sample_size_enters_the_accuracy_model_when_results_have_several():
    rng = np.random.default_rng(4)
    results = []
    for per_class, gain in ((10, -0.6), (20, 0.0)):  # same scores, fine-tuning on fewer images reaches less
        result = synthetic_result(n_targets=4, seed=7)
        result["suite"] = {"name": f"s{per_class}"}
        for target in result["targets"]:
            c = target["n_classes"]
            target["n_rank_images"] = per_class * c
            for row in target["backbones"]:
                cm = float(rng.uniform(1.5 / c, 0.95))
                row["scores"]["class_means"] = cm
                exact = float(from_logit(0.3 + 1.2 * to_logit(cm, c) + gain, c))
                row["accuracy"] = {"mean": exact, "std": 0.0, "per_seed": [exact]}
        results.append(result)
    calibration = fit_calibration(results)
    models = calibration.accuracy["finetune"]
    assert IMAGES_PER_CLASS in models[0].inputs
    assert [m.inputs for m in models[-2:]] == [("class_means", IMAGES_PER_CLASS), ("class_means",)]
    assert calibration.evaluation["accuracy"]["finetune"]["overall"]["mae"] < 0.01
    slope = models[0].coef[1 + models[0].inputs.index(IMAGES_PER_CLASS)]
    assert slope == pytest.approx(0.6 / math.log(2), rel=0.1)  # the -0.6 logit gap between 10 and 20 per class
    scores = {"class_means": 0.5, "knn": 0.5, "linear_probe": 0.5}
    few, many = (calibration.predict_accuracy(10, scores, images_per_class=n)["finetune"] for n in (10, 20))
    assert few["value"] < many["value"] and few["inputs"] == list(models[0].inputs)
    # without the size, a model that does not need it answers
    assert calibration.predict_accuracy(10, scores)["finetune"]["inputs"] == ["class_means"]
    assert calibration.images_per_class() == [10.0, 20.0]
    # one sample size: the size is no candidate input
    single = fit_calibration([results[1]])
    assert all(IMAGES_PER_CLASS not in m.inputs for m in single.accuracy["finetune"])


def test_loto_prediction_for_a_target_is_a_fit_on_the_other_targets_only():
    result = synthetic_result(n_targets=4)
    held = result["targets"][3]
    for row in held["backbones"]:  # an odd target: far better accuracies than its scores suggest
        value = 0.5 * (1.0 + row["accuracy"]["mean"])
        row["accuracy"] = {"mean": value, "std": 0.0, "per_seed": [value]}
    samples, directions = samples_from_results([result])
    evaluation = loto_evaluation(samples, directions)
    [entry] = [r for r in evaluation["accuracy"]["finetune"]["per_target"] if r["target"] == "t3"]

    others = {**result, "targets": result["targets"][:3]}
    honest = fit_calibration([others])
    errors = [
        abs(honest.predict_accuracy(held["n_classes"], row["scores"])["finetune"]["value"] - row["accuracy"]["mean"])
        for row in held["backbones"]
    ]
    assert entry["mae"] == pytest.approx(float(np.mean(errors)), abs=1e-12)
    cheat = fit_calibration([result])  # a fit that saw t3 predicts it better: the test can tell the two apart
    cheat_errors = [
        abs(cheat.predict_accuracy(held["n_classes"], row["scores"])["finetune"]["value"] - row["accuracy"]["mean"])
        for row in held["backbones"]
    ]
    assert np.mean(cheat_errors) < entry["mae"] - 0.01


def test_the_headline_a_ranking_carries_is_the_loto_evaluation():
    calibration = fit_calibration([synthetic_result()])
    headline = calibration.headline()
    accuracy, fusion = calibration.evaluation["accuracy"], calibration.evaluation["fusion"]
    assert headline["finetune_mae"] == accuracy["finetune"]["overall"]["mae"]
    assert headline["linear_probe_coverage"] == accuracy["linear_probe"]["overall"]["coverage"]
    assert headline["best_single"] == fusion["best_single"] and headline["nominal_coverage"] == 0.9
    assert headline["fused_mean_weighted_tau"] == fusion["fused_mean_weighted_tau"]


def test_missing_inputs_fall_back_to_class_means_then_to_no_prediction():
    calibration = fit_calibration([synthetic_result()])
    models = calibration.accuracy["finetune"]
    assert models[-1].inputs == ("class_means",)
    only_cm = calibration.predict_accuracy(10, {"class_means": 0.5})
    assert only_cm["finetune"]["inputs"] == ["class_means"]
    assert calibration.predict_accuracy(10, {"logme": 1.0}) is None  # no class_means: no prediction, not a guess


# ---------------------------------------------------------------------------------------------- fusion


def test_fused_scores_are_the_mean_of_standardised_members():
    fusion = Fusion(("a", "b"), (1.0, 1.0), "zscore", {"a": True, "b": False})
    rows = [{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 2.0}, {"a": 3.0, "b": None}]
    fused = fused_scores(rows, fusion)
    za = (np.array([1.0, 2.0, 3.0]) - 2.0) / np.std([1.0, 2.0, 3.0])
    zb = np.array([-1.0, 1.0])  # -3, -2 standardised
    assert fused == pytest.approx([(za[0] + zb[0]) / 2, (za[1] + zb[1]) / 2, za[2]])
    ranked = fused_scores(rows, Fusion(("a",), (1.0,), "rank", {"a": True}))
    assert ranked == pytest.approx([0.0, 0.5, 1.0])


def _target(
    name: str, good: list[float], oracle: list[float], accuracy: list[float], kind: str | None = None
) -> dict[str, Any]:
    rows = [
        {
            "id": f"b{i}",
            # "good2" and "good3" are "good" again (a committee needs three); class_means is not an estimator here
            "scores": {"good": g, "good2": g, "good3": g, "oracle": o, "class_means": a - 0.1},
            "accuracy": {"mean": a, "std": 0.0, "per_seed": [a]},
            "linear_probe_accuracy": None,
        }
        for i, (g, o, a) in enumerate(zip(good, oracle, accuracy, strict=True))
    ]
    target: dict[str, Any] = {"name": name, "n_classes": 4, "backbones": rows}
    if kind is not None:
        target["kind"] = kind
    return target


_GOOD_AND_ORACLE = [{"name": n, "higher_is_better": True} for n in ("good", "good2", "good3", "oracle")]


def test_fusion_loto_never_looks_at_the_held_out_target():
    up, down = [1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 4.0, 3.0, 2.0, 1.0]
    accuracy = [0.3, 0.4, 0.5, 0.6, 0.7]
    result = {
        "kind": "benchmark",
        "estimators": _GOOD_AND_ORACLE,
        "baselines": [],
        # the "good"s are right on t0-t2 and wrong on t3; "oracle" the other way round
        "targets": [_target(f"t{i}", up, down, accuracy) for i in range(3)] + [_target("t3", down, up, accuracy)],
    }
    samples, directions = samples_from_results([result])
    fusion = loto_evaluation(samples, directions)["fusion"]
    held = fusion["per_target"][3]
    assert held["target"] == "t3"
    # drawn from t0-t2 only: the "good"s lead it, "oracle" (wrong there) comes last if at all
    assert held["fusion"]["members"][:3] == ["good", "good2", "good3"]
    assert held["weighted_tau"] == pytest.approx(-1.0)  # what an honest choice scores there
    assert held["top1_regret"] == pytest.approx(0.4)
    assert held["selected_single"] == "good"
    assert fusion["fused_mean_weighted_tau"] == pytest.approx((1 + 1 + 1 - 1) / 4)
    assert fusion["best_single"] == "good" and fusion["fused_at_least_best_single"] is True
    assert fusion["single_mean_weighted_tau"]["oracle"] == pytest.approx(-0.5)
    assert fusion["per_kind"] is None  # the result names no kinds


def test_committee_has_three_members_at_least_and_two_of_a_family_at_most():
    samples, directions = samples_from_results([synthetic_result(n_targets=4, seed=2)])
    candidates = _fusion_candidates(samples, directions)
    fusion, _, selection = _select_fusion(samples, directions, candidates)
    assert len(candidates) >= 3  # one per family here, so no family cap applies
    assert len(fusion.members) >= 3 and len(fusion.members) == min(selection["chosen"]["size"], len(candidates))
    families = [family_of(m) for m in fusion.members]
    assert max(families.count(f) for f in families) <= 2
    # among rules within _NEAR_TIE of the best criterion, the largest committee was taken
    best = max(row["criterion"] for row in selection["rules"])
    near = [row["rule"]["size"] for row in selection["rules"] if row["criterion"] >= best - _NEAR_TIE]
    assert selection["chosen"]["size"] == max(near)
    assert {rule.size for rule in COMMITTEE_RULES} == {3, 5, 7}
    # the family cap skips a third sample-based estimator and takes the next family's best
    ranked = ["knn", "linear_probe", "parc", "logme", "leep", "class_means"]
    assert CommitteeRule(3, 2, "rank").members(ranked) == ("knn", "linear_probe", "logme")
    assert CommitteeRule(5, 1, "rank").members(ranked) == ("knn", "logme", "leep", "class_means")


def test_leave_one_kind_out_holds_a_whole_kind_out():
    up, down = [1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 4.0, 3.0, 2.0, 1.0]
    accuracy = [0.3, 0.4, 0.5, 0.6, 0.7]
    # kind "a": the "good"s are right; kind "b" (two targets): they are wrong and "oracle" is right
    targets = [_target(f"a{i}", up, down, accuracy, kind="a") for i in range(3)]
    targets += [_target(f"b{i}", down, up, accuracy, kind="b") for i in range(2)]
    result = {"kind": "benchmark", "estimators": _GOOD_AND_ORACLE, "baselines": [], "targets": targets}
    samples, directions = samples_from_results([result])
    assert {s.kind for s in samples} == {"a", "b"}
    per_kind = {row["kind"]: row for row in loto_evaluation(samples, directions)["fusion"]["per_kind"]}
    assert per_kind["b"]["targets"] == ["b0", "b1"]
    # fitted on kind "a" alone, the committee is led by the "good"s and is wrong on both "b" targets at once,
    # whereas holding out one "b" target lets the other one teach the fit
    assert per_kind["b"]["fusion"]["members"][:3] == ["good", "good2", "good3"]
    assert per_kind["b"]["weighted_tau"] == pytest.approx(-1.0)
    # kinds missing from a result come from the caller
    legacy = {**result, "targets": [{k: v for k, v in t.items() if k != "kind"} for t in targets]}
    kinds = {t["name"]: t["kind"] for t in targets}
    assert [s.kind for s in samples_from_results([legacy], kinds)[0]] == [s.kind for s in samples]


def test_one_target_in_two_settings_is_two_rankings_and_one_loto_group():
    up = [1.0, 2.0, 3.0, 4.0, 5.0]

    def result(name: str, shift: float, accuracy: list[float], per_class: int) -> dict[str, Any]:
        targets = [_target(f"t{i}", [g + shift for g in up], up, accuracy) for i in range(3)]
        for target in targets:
            target["n_rank_images"] = per_class * target["n_classes"]
        return {
            "kind": "benchmark",
            "suite": {"name": name},
            "estimators": _GOOD_AND_ORACLE,
            "baselines": [],
            "targets": targets,
        }

    # Within each setting "good" orders the backbones perfectly; pooled, the few-shot setting's higher scores and
    # lower accuracies would make it look anti-correlated.
    many = result("default", 0.0, [0.5, 0.6, 0.7, 0.8, 0.9], 20)
    few = result("default-10-per-class", 10.0, [0.3, 0.35, 0.4, 0.45, 0.5], 10)
    samples, directions = samples_from_results([many, few])
    assert {(s.setting, s.images_per_class) for s in samples} == {("default", 20.0), ("default-10-per-class", 10.0)}
    evaluation = loto_evaluation(samples, directions)
    fusion = evaluation["fusion"]
    assert [r["target"] for r in fusion["per_target"]] == ["t0", "t1", "t2"]  # held out with both settings
    assert fusion["single_mean_weighted_tau"]["good"] == pytest.approx(1.0)
    assert fusion["fused_mean_weighted_tau"] == pytest.approx(1.0)
    settings = {row["setting"]: row for row in evaluation["accuracy"]["finetune"]["per_setting"]}
    assert settings.keys() == {"default", "default-10-per-class"}
    assert settings["default"]["images_per_class"] == 20 and settings["default"]["n"] == 15
    # two results of one suite stay two settings
    twice = samples_from_results([many, many])[0]
    assert {s.setting for s in twice} == {"default#1", "default#2"}


def test_expensive_estimators_are_not_fusion_members_but_are_still_compared():
    result = synthetic_result()
    for target in result["targets"]:
        for row in target["backbones"]:
            row["seconds"]["per_estimator"]["class_means"] = 3.0
    calibration = fit_calibration([result], max_member_seconds=0.5)
    assert "class_means" not in calibration.fusion.members
    fusion = calibration.evaluation["fusion"]
    assert "class_means" in fusion["single_mean_weighted_tau"] and "class_means" not in fusion["final_candidates"]
    fusable = {n: v for n, v in fusion["single_mean_weighted_tau"].items() if n in fusion["final_candidates"]}
    assert fusion["best_fusable_single"] == max(fusable, key=fusable.get)


def test_every_estimator_may_be_a_fusion_member_unless_restricted():
    calibration = fit_calibration([synthetic_result()])
    candidates = calibration.evaluation["fusion"]["final_candidates"]
    assert "logme" in candidates and "fusion_unrestricted" not in calibration.evaluation
    cheap = fit_calibration([synthetic_result()], fusable=FUSABLE_ESTIMATORS)
    candidates = cheap.evaluation["fusion"]["final_candidates"]
    assert set(candidates) <= FUSABLE_ESTIMATORS | {"source_accuracy"} and "logme" not in candidates
    widened = fit_calibration([synthetic_result()], fusable={"logme", "class_means"})
    assert set(widened.evaluation["fusion"]["final_candidates"]) == {"logme", "class_means", "source_accuracy"}


def test_fused_verdict_matches_the_numbers():
    evaluation = fit_calibration([synthetic_result(n_targets=5, seed=3)], fusable=FUSABLE_ESTIMATORS).evaluation
    fusion = evaluation["fusion"]
    unrestricted = evaluation["fusion_unrestricted"]  # same protocol, any estimator may be a member
    assert unrestricted["fused_mean_weighted_tau"] == pytest.approx(
        np.mean([r["weighted_tau"] for r in unrestricted["per_target"]])
    )
    best = fusion["single_mean_weighted_tau"][fusion["best_single"]]
    assert best == max(v for v in fusion["single_mean_weighted_tau"].values() if v is not None)
    assert fusion["fused_at_least_best_single"] == (fusion["fused_mean_weighted_tau"] >= best - 1e-12)
    per_target = [r["weighted_tau"] for r in fusion["per_target"]]
    assert fusion["fused_mean_weighted_tau"] == pytest.approx(np.mean(per_target))
    accuracy = [r["accuracy"]["mean"] for r in synthetic_result(n_targets=5, seed=3)["targets"][0]["backbones"]]
    logme = [r["scores"]["logme"] for r in synthetic_result(n_targets=5, seed=3)["targets"][0]["backbones"]]
    assert fusion["per_target"][0]["single_weighted_tau"]["logme"] == pytest.approx(weightedtau(logme, accuracy)[0])


# --------------------------------------------------------------------------------------------- p_best


def _features(n_per_class: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    features = rng.normal(size=(labels.size, 8))
    features[:, :3] += separation * np.eye(3)[labels]
    return features, labels


def _scorer(feature_list: list[np.ndarray], labels: np.ndarray):
    def scores(rows: np.ndarray) -> list[dict[str, float | None]]:
        out = []
        for features in feature_list:
            stats = Statistics(features[rows], labels[rows])
            out.append({"class_means": score("class_means", stats=stats), "logme": score("logme", stats=stats)})
        return out

    return scores


def test_p_best_sums_to_one_is_deterministic_and_favours_the_clear_winner():
    labels = _features(12, 0.0, 0)[1]
    feature_list = [_features(12, s, seed)[0] for seed, s in enumerate((0.2, 1.0, 1.1, 4.0))]
    fusion = Fusion(("class_means", "logme"), (1.0, 1.0), "zscore", {"class_means": True, "logme": True})
    first = p_best(_scorer(feature_list, labels), labels, fusion, n_bootstrap=30, seed=7)
    again = p_best(_scorer(feature_list, labels), labels, fusion, n_bootstrap=30, seed=7)
    assert first.sum() == pytest.approx(1.0) and np.array_equal(first, again)
    assert first[3] > 0.9 and first[0] == 0.0  # the well-separated backbone wins nearly every half-sample
    middle = [_features(12, 1.0, seed)[0] for seed in (10, 11)]  # two equal-quality backbones: a split
    split = p_best(_scorer(middle, labels), labels, fusion, n_bootstrap=40, seed=0)
    assert split.sum() == pytest.approx(1.0) and 0.0 < split[0] < 1.0


def test_half_samples_are_stratified_without_replacement():
    labels = np.repeat(np.arange(3), [2, 5, 8])
    rows = _half_sample(labels, np.random.default_rng(0))
    assert np.unique(rows).size == rows.size  # no duplicated image
    assert np.bincount(labels[rows]).tolist() == [2, 3, 4]  # half of each class, at least 2


# ------------------------------------------------------------------------------------------------ files


def test_calibration_json_round_trips(tmp_path):
    calibration = fit_calibration([synthetic_result()], files=["bench.json"])
    path = save_calibration(calibration, tmp_path / "sub" / "calibration.json")
    loaded = load_calibration(path)
    assert loaded.to_dict() == json.loads(path.read_text())
    assert loaded.fusion == calibration.fusion and loaded.path == str(path)
    assert Fusion.from_dict(calibration.fusion.to_dict()) == calibration.fusion
    assert loaded.accuracy["finetune"] == calibration.accuracy["finetune"]
    assert loaded.source["results"][0] == {
        "file": "bench.json", "suite": "synthetic", "fingerprint": "cpu-test", "created": "2026-12-06T00:00:00Z",
        "n_targets": 4, "n_backbones": 7,
    }  # fmt: skip
    scores = {"class_means": 0.55, "knn": 0.4}
    assert loaded.predict_accuracy(10, scores) == calibration.predict_accuracy(10, scores)
    # results recorded without the zoo's hashes: the calibration records null for each and says so
    assert loaded.source["zoo"] == zoo_hashes_of([synthetic_result()])
    assert loaded.zoo_weights() == {f"zoo:b{b}": None for b in range(7)}
    assert "record no weights sha256 for zoo:b0, zoo:b1" in loaded.source["zoo"]["note"]


def test_the_zoo_hashes_a_calibration_records_are_the_ones_its_results_used():
    recorded = synthetic_result(n_targets=2, n_backbones=3)
    for target in recorded["targets"]:
        for b, row in enumerate(target["backbones"]):
            row["weights_sha256"] = f"{b}" * 64
    recorded["zoo"] = {"models": {"zoo:b0": {"weights_sha256": "0" * 64, "source_dataset_sha256": "d" * 64}}}
    zoo = zoo_hashes_of([recorded])
    assert zoo == {
        "models": {
            "zoo:b0": {"weights_sha256": "0" * 64, "source_dataset_sha256": "d" * 64},
            "zoo:b1": {"weights_sha256": "1" * 64, "source_dataset_sha256": None},
            "zoo:b2": {"weights_sha256": "2" * 64, "source_dataset_sha256": None},
        },
        "note": None,
    }
    rebuilt = json.loads(json.dumps(recorded))  # the same benchmark with another build of zoo:b1
    for target in rebuilt["targets"]:
        target["backbones"][1]["weights_sha256"] = "f" * 64
    both = zoo_hashes_of([recorded, rebuilt])
    assert both is not None and both["models"]["zoo:b1"]["weights_sha256"] is None
    assert both["models"]["zoo:b0"]["weights_sha256"] == "0" * 64
    assert both["note"] == "the results used different weights for zoo:b1: none is recorded"
    without_zoo = json.loads(json.dumps(recorded).replace('"zoo:', '"timm:'))
    assert zoo_hashes_of([without_zoo]) is None


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("{not json", "cannot read calibration file"),
        ('{"kind": "benchmark"}', "not a calibration file"),
        ('{"kind": "calibration", "schema_version": 99}', "schema_version 99"),
        ('{"kind": "calibration", "schema_version": 1, "predicted_accuracy": {}}', "malformed calibration"),
    ],
)
def test_a_bad_calibration_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "calibration.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidCalibration, match=message) as info:
        load_calibration(path)
    assert info.value.code == "invalid_calibration"
    with pytest.raises(InvalidCalibration):
        resolve_calibration(path)  # an explicit path must be valid


def test_bad_model_numbers_are_refused(tmp_path):
    data = fit_calibration([synthetic_result()]).to_dict()
    data["predicted_accuracy"]["finetune"]["models"][0]["coef"] = [1.0]  # intercept only, inputs need slopes
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidCalibration, match="malformed"):
        load_calibration(path)


def test_the_packaged_default_is_named_by_its_place_in_the_package_not_the_install_path():
    packaged = resolve_calibration("default")
    assert packaged is not None and packaged.path == "packaged:service/builtin/calibration.json"
    assert resolve_calibration(DEFAULT_CALIBRATION_PATH).path == str(Path(DEFAULT_CALIBRATION_PATH).resolve())


def test_missing_packaged_default_means_no_calibration(tmp_path, monkeypatch):
    monkeypatch.setattr(cal_model, "DEFAULT_CALIBRATION_PATH", tmp_path / "absent.json")
    assert resolve_calibration("default") is None
    assert resolve_calibration(None) is None


def test_too_few_targets_or_no_class_means_cannot_be_calibrated():
    with pytest.raises(InvalidCalibration, match="at least 3 targets"):
        fit_calibration([synthetic_result(n_targets=2)])
    result = synthetic_result()
    for target in result["targets"]:
        for row in target["backbones"]:
            del row["scores"]["class_means"]
    with pytest.raises(InvalidCalibration, match="class_means"):
        fit_calibration([result])
    with pytest.raises(InvalidCalibration, match="not a benchmark result"):
        fit_calibration([{"kind": "ranking"}])


# -------------------------------------------------------------------------------------------------- CLI


def test_cli_calibrate_prints_the_loto_table_and_writes_the_json(tmp_path):
    from typer.testing import CliRunner

    from service.cli import app

    source = tmp_path / "bench.json"
    source.write_text(json.dumps(synthetic_result()))
    out = tmp_path / "calibration.json"
    runner = CliRunner()
    shown = runner.invoke(app, ["calibrate", str(source), "-o", str(out)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "leave-one-target-out" in shown.stdout and "best single estimator" in shown.stdout
    assert load_calibration(out).fusion.members
    as_json = runner.invoke(app, ["calibrate", str(source), "-o", str(out), "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    overall = data["evaluation"]["accuracy"]["finetune"]["overall"]
    assert overall["n"] == 28 and 0.0 <= overall["mae"] < 0.2
    assert [r["target"] for r in data["evaluation"]["accuracy"]["finetune"]["per_target"]] == ["t0", "t1", "t2", "t3"]
    markdown = runner.invoke(app, ["calibrate", str(source), "-o", str(out), "--markdown"])
    assert markdown.exit_code == 0, markdown.output
    mae = f"**{overall['mae']:.3f}**"
    assert "| target | backbones | MAE |" in markdown.stdout and f"| **all** | 28 | {mae} |" in markdown.stdout
    assert "Verdict: the fused ranking" in markdown.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "ranking"}')
    failed = runner.invoke(app, ["calibrate", str(bad), "-o", str(tmp_path / "x.json")])
    assert failed.exit_code == 2 and "invalid_calibration" in failed.stderr
    assert not (tmp_path / "x.json").exists()


def test_packaged_calibration_when_present_is_valid():
    path = Path(DEFAULT_CALIBRATION_PATH)
    if not path.is_file():
        pytest.skip("no packaged calibration yet (regenerate with backbone-rank calibrate)")
    calibration = load_calibration(path)
    assert calibration.fusion.members and calibration.accuracy["finetune"]


def test_the_prior_is_known_for_suite_backbones_only(builtins):
    assert source_accuracy_of("tf_efficientnet_lite0.in1k") == pytest.approx(0.7483)  # the default suite's
    assert source_accuracy_of("resnet50.tv_in1k") == pytest.approx(0.7615)  # torchvision's documented top-1
    assert source_accuracy_of("random:resnet10t") is None
