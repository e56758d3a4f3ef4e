"""Benchmark metrics, suite definitions and the standard suite's published ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from service.pipeline.benchmark.benchmark import BASELINES
from service.pipeline.benchmark.metrics import (
    aggregate_over_targets,
    metric_values,
    random_baseline_metrics,
    target_metrics,
    top1_regret,
)
from service.pipeline.benchmark.results import summarize
from service.pipeline.benchmark.suites import (
    STANDARD_TARGET_FOLDERS,
    FinetuneSpec,
    get_suite,
    load_suite_file,
    standard_ground_truth,
)

# ImageNet top-1 (torchvision docs) and penultimate feature dims of the 11 standard models (estimators.md §3.5).
TOP1 = {
    "resnet34": 73.30, "resnet50": 76.15, "resnet101": 77.37, "resnet152": 78.31, "densenet121": 74.65,
    "densenet169": 76.00, "densenet201": 77.20, "mnasnet1_0": 73.51, "mobilenet_v2": 71.88, "googlenet": 69.78,
    "inception_v3": 77.45,
}  # fmt: skip
DIMS = {
    "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048, "densenet121": 1024,
    "densenet169": 1664, "densenet201": 1920, "mnasnet1_0": 1280, "mobilenet_v2": 1280, "googlenet": 1024,
    "inception_v3": 2048,
}  # fmt: skip


def test_metric_values_on_known_orderings() -> None:
    acc = [0.5, 0.6, 0.7, 0.8]
    perfect = metric_values([1, 2, 3, 4], acc)
    assert perfect == pytest.approx({"weighted_tau": 1.0, "kendall_tau": 1.0, "pearson": 1.0, "top1_regret": 0.0})
    reverse = metric_values([4, 3, 2, 1], acc)
    assert reverse["weighted_tau"] == pytest.approx(-1.0) and reverse["kendall_tau"] == pytest.approx(-1.0)
    assert reverse["top1_regret"] == pytest.approx(0.3)
    scores = [0.3, 0.1, 0.9, 0.2]
    got = metric_values(scores, acc)
    assert got["weighted_tau"] == pytest.approx(stats.weightedtau(scores, acc).statistic)
    assert got["weighted_tau"] == pytest.approx(stats.weightedtau(acc, scores).statistic)  # symmetric (rank=True)
    assert got["top1_regret"] == pytest.approx(0.8 - 0.7)


def test_constant_scores_have_no_correlation_and_ties_average_the_regret() -> None:
    got = metric_values([1.0, 1.0, 1.0], [0.2, 0.5, 0.8])
    assert got["weighted_tau"] is None and got["kendall_tau"] is None and got["pearson"] is None
    assert got["top1_regret"] == pytest.approx(0.8 - 0.5)
    assert top1_regret([2, 2, 1], [0.9, 0.5, 0.1]) == pytest.approx(0.9 - 0.7)
    with pytest.raises(ValueError, match="same length"):
        metric_values([1, 2], [0.1, 0.2, 0.3])


def test_target_metrics_bootstrap_is_deterministic_and_brackets_the_value() -> None:
    rng = np.random.default_rng(0)
    acc = [list(0.1 * i + rng.normal(0, 0.01, 3)) for i in range(8)]
    scores = np.arange(8) + rng.normal(0, 1.5, 8)
    a = target_metrics(scores, acc, n_bootstrap=300, seed=1)
    b = target_metrics(scores, acc, n_bootstrap=300, seed=1)
    assert a == b
    for name in ("weighted_tau", "kendall_tau", "pearson"):
        m = a[name]
        assert m["ci_low"] <= m["value"] + 1e-12 and m["value"] - 1e-12 <= m["ci_high"], name
        assert m["ci_low"] < m["ci_high"]
    assert a["top1_regret"]["ci_low"] >= 0.0
    point = target_metrics(scores, acc, n_bootstrap=0)
    assert point["weighted_tau"]["value"] == a["weighted_tau"]["value"] and point["weighted_tau"]["ci_low"] is None
    with pytest.raises(ValueError, match="one non-empty list"):
        target_metrics([1, 2], [[0.1], []])


def test_random_baseline_is_centred_with_a_wide_range() -> None:
    acc = [[0.1 * i] for i in range(10)]
    got = random_baseline_metrics(acc, n_draws=2000, seed=0)
    assert abs(got["weighted_tau"]["value"]) < 0.05
    assert abs(got["kendall_tau"]["value"]) < 0.05
    assert got["weighted_tau"]["ci_low"] < -0.3 and got["weighted_tau"]["ci_high"] > 0.3
    assert 0.0 < got["top1_regret"]["value"] < 0.9


def test_aggregate_over_targets_means_and_skips_undefined() -> None:
    per_target = [
        {"weighted_tau": {"value": 0.2}, "kendall_tau": {"value": None}, "pearson": {"value": 0.1},
         "top1_regret": {"value": 0.0}},
        {"weighted_tau": {"value": 0.6}, "kendall_tau": {"value": 0.5}, "pearson": {"value": 0.3},
         "top1_regret": {"value": 0.1}},
    ]  # fmt: skip
    got = aggregate_over_targets(per_target, n_bootstrap=500)
    assert got["weighted_tau"]["mean"] == pytest.approx(0.4) and got["weighted_tau"]["n_targets"] == 2
    assert 0.2 <= got["weighted_tau"]["ci_low"] <= got["weighted_tau"]["ci_high"] <= 0.6
    assert got["kendall_tau"] == {"mean": 0.5, "ci_low": None, "ci_high": None, "n_targets": 1}


def test_standard_ground_truth_reproduces_the_published_baselines() -> None:
    table = standard_ground_truth()
    assert sorted(table) == sorted(STANDARD_TARGET_FOLDERS)
    assert all(len(models) == 11 for models in table.values())
    assert table["aircraft"]["resnet152"] == pytest.approx(0.8629)
    assert table["voc2007"]["googlenet"] == pytest.approx(0.8258)
    assert table["flowers"]["mnasnet1_0"] == pytest.approx(0.9539)
    models = list(TOP1)
    top1 = {t: stats.weightedtau([TOP1[m] for m in models], [table[t][m] for m in models]).statistic for t in table}
    dims = {t: stats.weightedtau([DIMS[m] for m in models], [table[t][m] for m in models]).statistic for t in table}
    # estimators.md §3.5, computed from the same numbers (3 decimals)
    assert top1["aircraft"] == pytest.approx(0.651, abs=6e-4)
    assert top1["flowers"] == pytest.approx(0.198, abs=6e-4)
    assert np.mean(list(top1.values())) == pytest.approx(0.598, abs=6e-4)
    assert np.mean(list(dims.values())) == pytest.approx(0.472, abs=6e-4)


def test_standard_suite_maps_backbones_and_reports_the_unavailable(tmp_path) -> None:
    suite = get_suite("standard", data_dir=tmp_path, backbone_map={"googlenet": "resnet18@/w/googlenet.safetensors"})
    ids = {b.published_name: b.id for b in suite.backbones}
    assert ids["resnet50"] == "resnet50.tv_in1k"
    assert ids["googlenet"] == "resnet18@/w/googlenet.safetensors"
    assert ids["mnasnet1_0"] == "unavailable:mnasnet1_0"
    assert suite.ground_truth == "published"
    assert suite.published["pets"]["resnet50.tv_in1k"] == pytest.approx(0.9388)
    assert {t.dataset for t in suite.targets} == {str(tmp_path / f) for f in STANDARD_TARGET_FOLDERS.values()}
    with pytest.raises(ValueError, match="not standard models"):
        get_suite("standard", backbone_map={"vgg16": "vgg16.tv_in1k"})
    with pytest.raises(ValueError, match="unknown suite 'nope'"):
        get_suite("nope")


def test_builtin_suites_take_another_images_per_class_setting(builtins: None) -> None:
    default = get_suite("default")
    assert default.name == "default" and default.rank_max_per_class == default.finetune.max_per_class == 20
    assert get_suite("default", per_class=20).fingerprint() == default.fingerprint()
    ten = get_suite("default", per_class=10)
    # another name: its result files sit beside the default's instead of replacing them
    assert ten.name == "default-10-per-class" and ten.rank_max_per_class == ten.finetune.max_per_class == 10
    assert ten.fingerprint() != default.fingerprint() and ten.backbones == default.backbones
    assert get_suite("quick", per_class=5).name == "quick-5-per-class"
    with pytest.raises(ValueError, match=r"applies to the built-in suites \(default, quick\)"):
        get_suite("standard", per_class=10)
    with pytest.raises(ValueError, match="at least 2 images"):
        get_suite("default", per_class=1)


def test_the_default_suite_is_wide_and_grouped_by_kind(builtins: None) -> None:
    from service.builtin.datasets import BUILTIN_DATASETS

    default = get_suite("default")
    assert len(default.targets) >= 12 and len({t.name for t in default.targets}) == len(default.targets)
    infos = [BUILTIN_DATASETS[t.dataset.removeprefix("builtin:")] for t in default.targets]
    assert sum(info.closeness == "far" for info in infos) * 2 >= len(infos)
    assert all(t.kind and t.kind == info.kind for t, info in zip(default.targets, infos, strict=True))
    assert len({t.kind for t in default.targets}) >= 5
    assert "kind" in default.to_dict()["targets"][0]
    lites = {b.id: b for b in default.backbones if "efficientnet_lite" in b.id}
    assert set(lites) == {f"tf_efficientnet_lite{k}.in1k" for k in range(3)}
    assert len({b.input_size for b in lites.values()}) > 1 and lites["tf_efficientnet_lite0.in1k"].input_size == 64
    assert all(0.7 < (b.source_accuracy or 0) < 0.8 for b in lites.values())
    assert default.finetune == FinetuneSpec(epochs=6, max_per_class=20)
    quick = get_suite("quick")
    assert [t.name for t in quick.targets] == ["glyphs-greek", "textures-fine"] and len(quick.backbones) == 4


def test_suite_toml_file(tmp_path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'description = "d"\nground_truth = "published"\n'
        '[[targets]]\nname = "t1"\ndataset = "/data/t1"\n'
        '[[backbones]]\nid = "a"\n[[backbones]]\nid = "b"\ninput_size = 64\n'
        "[finetune]\nepochs = 2\nseeds = [0, 1]\n"
        '[published.t1]\na = 0.5\nb = 0.75\n',
        encoding="utf-8",
    )
    suite = load_suite_file(path)
    assert suite.name == "mine" and suite.finetune.epochs == 2 and suite.finetune.seeds == (0, 1)
    assert suite.backbones[1].input_size == 64 and suite.published["t1"]["b"] == 0.75
    assert get_suite(str(path)).fingerprint() == suite.fingerprint()
    bad = {
        "needs at least one \\[\\[targets\\]\\]": 'ground_truth = "finetune"\n[[backbones]]\nid = "a"\n',
        "lacks dataset": '[[targets]]\nname = "t"\n[[backbones]]\nid = "a"\n',
        "duplicate": '[[targets]]\nname = "t"\ndataset = "x"\n[[backbones]]\nid = "a"\n[[backbones]]\nid = "a"\n',
        "accuracy in \\[0, 1\\]": 'ground_truth = "published"\n[[targets]]\nname = "t"\ndataset = "x"\n'
        '[[backbones]]\nid = "a"\n[published.t]\na = 93.5\n',
        "bad \\[finetune\\] key": '[[targets]]\nname = "t"\ndataset = "x"\n[[backbones]]\nid = "a"\n'
        "[finetune]\nepoch = 3\n",
        "not valid TOML": "[[targets]\n",
    }
    for message, text in bad.items():
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            load_suite_file(path)


def _fake_result(n_targets: int = 3, n_backbones: int = 5) -> dict:
    rng = np.random.default_rng(0)
    targets = []
    for t in range(n_targets):
        rows = []
        for b in range(n_backbones):
            acc = 0.5 + 0.05 * b
            rows.append(
                {
                    "id": f"b{b}",
                    "scores": {"good": float(b + rng.normal(0, 0.3)), "bad": float(-b), "lower": float(-b),
                               "source_accuracy": None if b == 0 else 0.3 + 0.1 * b, "feature_dim": 64.0},
                    "accuracy": {"mean": acc, "std": 0.01, "per_seed": [acc - 0.01, acc + 0.01]},
                    "seconds": {"rank": 1.0, "finetune": 50.0},
                }
            )  # fmt: skip
        targets.append({"name": f"t{t}", "backbones": rows})
    return {
        "estimators": [
            {"name": "good", "higher_is_better": True},
            {"name": "bad", "higher_is_better": True},
            {"name": "lower", "higher_is_better": False},
        ],
        "baselines": [dict(b) for b in BASELINES],
        "targets": targets,
    }


def test_summarize_orients_scores_and_includes_baselines() -> None:
    result = summarize(_fake_result(), n_bootstrap=200)
    summary = result["summary"]
    assert summary["good"]["weighted_tau"]["mean"] > 0.5 and summary["good"]["is_baseline"] is False
    assert summary["bad"]["weighted_tau"]["mean"] == pytest.approx(-1.0)
    assert summary["lower"]["weighted_tau"]["mean"] == pytest.approx(1.0)  # lower-is-better negated
    assert summary["source_accuracy"]["is_baseline"]
    assert summary["source_accuracy"]["weighted_tau"]["mean"] == pytest.approx(1.0)
    assert summary["feature_dim"]["weighted_tau"]["mean"] is None  # constant: undefined, not a crash
    assert abs(summary["random"]["weighted_tau"]["mean"]) < 0.1
    assert result["targets"][0]["metrics"]["good"]["weighted_tau"]["ci_low"] is not None
    assert result["cost"]["ranking_seconds"] == 15.0 and result["cost"]["ratio"] == pytest.approx(50.0)


def test_summarize_a_target_with_one_backbone_has_no_metrics() -> None:
    result = _fake_result(n_targets=2, n_backbones=1)
    summarize(result, n_bootstrap=50)
    assert all(m is None for m in result["targets"][0]["metrics"].values())
    assert result["summary"]["good"]["weighted_tau"] == {"mean": None, "ci_low": None, "ci_high": None, "n_targets": 0}
