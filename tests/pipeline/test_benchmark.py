"""run_benchmark end to end: real images, real timm backbones, published and fine-tuned ground truth, resume, CLI."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from service.contract.results import BenchmarkResult  # noqa: E402
from service.pipeline import plugins  # noqa: E402
from service.pipeline.benchmark import benchmark as benchmark_module  # noqa: E402
from service.pipeline.benchmark import results as results_module  # noqa: E402
from service.pipeline.benchmark.benchmark import run_benchmark  # noqa: E402
from service.pipeline.benchmark.suites import FinetuneSpec, Suite, SuiteBackbone, SuiteTarget, get_suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("bars", "blob", "cross")
ESTIMATORS = ("logme", "h_score", "class_means", "leep")
PRIORS = ("source_accuracy", "model_size", "imagenet_top1")


def _draw(kind: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    canvas = np.full((size, size, 3), rng.integers(0, 50, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.integers(10, size - 10, 2)
    if kind == "bars":
        mask = ((xx + int(rng.integers(0, 4))) // 4) % 2 == 0
    elif kind == "blob":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < rng.integers(30, 70)
    else:
        mask = (abs(xx - cx) < 2) | (abs(yy - cy) < 2)
    canvas[mask] = rng.integers(160, 256, 3)
    return Image.fromarray(canvas)


def _splits(root: Path, seed: int, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for kind in CLASSES:
            (root / split / kind).mkdir(parents=True)
            for i in range(n):
                _draw(kind, rng).save(root / split / kind / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _splits(tmp_path_factory.mktemp("target"), 0, {"train": 8, "val": 4, "test": 6})


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path_factory.mktemp("w") / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _published_suite(target_dir: Path, weights: Path) -> Suite:
    ids = ("random:test_resnet", f"test_resnet@{weights}", "random:test_efficientnet")
    return Suite(
        name="tiny-published",
        description="three test backbones, published accuracies",
        targets=(SuiteTarget("shapes", str(target_dir), "test"),),
        backbones=tuple(SuiteBackbone(i, input_size=32) for i in ids),
        ground_truth="published",
        estimators=ESTIMATORS,
        published={"shapes": {ids[0]: 0.40, ids[1]: 0.55, ids[2]: 0.50}},
    )


def test_published_suite_scores_every_pair_and_writes_json_and_csv(target_dir, weights, tmp_path, monkeypatch):
    suite = _published_suite(target_dir, weights)
    events = []
    # a host that knows what one backbone was built from (as the built-in zoo does for zoo: ids)
    facts = {"weights_sha256": "card", "source": "s", "source_dataset_sha256": "d" * 64}
    monkeypatch.setattr(plugins, "_provenance_lookups", {})
    plugins.register_provenance("test", lambda backbone: facts if backbone == suite.backbones[1].id else None)
    result = run_benchmark(suite, out_dir=tmp_path, n_bootstrap=50, device="cpu", progress=events.append)
    assert result["kind"] == "benchmark" and result["schema_version"] == 2
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert [row["weights_sha256"] for row in result["targets"][0]["backbones"]] == [None, sha, None]
    # the weights this run loaded, with what the host knows of their source
    assert result["zoo"] == {"models": {suite.backbones[1].id: {**facts, "weights_sha256": sha}}, "note": None}
    BenchmarkResult.model_validate({**result, "request": None})
    assert result["suite"]["ground_truth"] == "published"
    [target] = result["targets"]
    assert target["n_classes"] == 3 and target["n_rank_images"] == 24  # the train split is ranked
    assert [r["id"] for r in target["backbones"]] == [b.id for b in suite.backbones]
    for row in target["backbones"]:
        assert row["input_size"] == 32 and row["accuracy"]["per_seed"] == [row["accuracy"]["mean"]]
        assert set(row["scores"]) == {*ESTIMATORS, *PRIORS, "feature_dim"}
        assert row["scores"]["source_accuracy"] is None and row["seconds"]["rank"] > 0
        assert row["seconds"]["finetune"] is None and row["finetune"] is None
        # the size prior is counted on the loaded model; no test model has a published ImageNet accuracy
        assert 0.1 < row["scores"]["model_size"] < 5 and row["scores"]["imagenet_top1"] is None
    # the product's orders under the packaged calibration, beside the estimators and the baselines
    assert set(target["metrics"]) == {"default", "predicted_accuracy", *ESTIMATORS, *PRIORS, "feature_dim", "random"}
    assert result["summary"]["default"]["is_product"] and not result["summary"]["logme"]["is_product"]
    assert target["metrics"]["source_accuracy"] is None  # no backbone knows its source accuracy
    assert target["metrics"]["imagenet_top1"] is None and target["metrics"]["model_size"]["weighted_tau"]
    assert result["summary"]["model_size"]["is_baseline"] is True
    logme = target["metrics"]["logme"]["weighted_tau"]
    assert -1.0 <= logme["value"] <= 1.0
    assert result["summary"]["logme"]["weighted_tau"]["n_targets"] == 1
    assert result["cost"]["ratio"] is None and result["cost"]["finetune_seconds"] is None
    assert {e.stage for e in events} >= {"rank", "done"} and events[-1].done == events[-1].total == 3

    files = result["files"]
    saved = json.loads(Path(files["json"]).read_text())
    assert saved["targets"][0]["metrics"]["logme"] == target["metrics"]["logme"]
    assert Path(files["json"]).name == f"benchmark-tiny-published-{result['environment']['fingerprint']}.json"
    with Path(files["csv"]).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["backbone"] for r in rows] == [b.id for b in suite.backbones]
    assert float(rows[1]["accuracy_mean"]) == 0.55 and rows[0]["source_accuracy"] == ""
    assert float(rows[0]["model_size"]) == target["backbones"][0]["scores"]["model_size"]
    assert not list(tmp_path.glob(".benchmark-*.partial.jsonl"))  # a finished run leaves no checkpoint


def test_standard_suite_uses_the_published_table_and_skips_what_is_missing(target_dir, weights, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "pets").symlink_to(target_dir, target_is_directory=True)
    mapping = {"resnet50": "random:test_resnet", "densenet121": f"test_resnet@{weights}",
               "googlenet": "random:test_efficientnet"}  # fmt: skip
    suite = get_suite("standard", data_dir=data, backbone_map=mapping)
    suite = Suite(**{**suite.__dict__, "estimators": ("logme", "h_score")})
    result = run_benchmark(suite, out_dir=None, n_bootstrap=20, device="cpu")
    [target] = result["targets"]
    assert target["name"] == "pets"
    accuracy = {r["id"]: r["accuracy"]["mean"] for r in target["backbones"]}
    assert accuracy == pytest.approx(
        {"random:test_resnet": 0.9388, f"test_resnet@{weights}": 0.9307, "random:test_efficientnet": 0.9138}
    )
    top1 = {r["id"]: r["source_accuracy"] for r in target["backbones"]}
    assert top1["random:test_resnet"] == pytest.approx(0.7615)  # the suite's ImageNet top-1 baseline
    skipped = {s["backbone"] for s in result["skipped"]["backbones"]}
    assert {"mnasnet1_0", "mobilenet_v2", "resnet34.tv_in1k", "inception_v3.tv_in1k"} <= skipped
    assert len(skipped) == 8
    assert len(result["skipped"]["targets"]) == 10
    assert all("dataset_not_found" in s["reason"] for s in result["skipped"]["targets"])
    assert result["summary"]["source_accuracy"]["weighted_tau"]["mean"] is not None


def test_unknown_target_and_too_few_backbones_are_clear_errors(target_dir, weights):
    suite = _published_suite(target_dir, weights)
    with pytest.raises(ValueError, match="has no target"):
        run_benchmark(suite, out_dir=None, targets=["nope"])
    few = Suite(**{**suite.__dict__, "backbones": suite.backbones[:1]})
    with pytest.raises(ValueError, match="fewer than 2 usable backbones"):
        run_benchmark(few, out_dir=None)


def _finetune_suite(target_dir: Path, weights: Path) -> Suite:
    return Suite(
        name="tiny-finetune",
        description="two test backbones, fine-tuned ground truth",
        targets=(SuiteTarget("shapes", str(target_dir), "test"),),
        backbones=(SuiteBackbone("random:test_resnet", input_size=32), SuiteBackbone(f"test_resnet@{weights}", 32)),
        estimators=ESTIMATORS,
        finetune=FinetuneSpec(epochs=1, lr_grid=(0.05,), seeds=(0, 1), batch_size=16, linear_probe=True),
    )


def test_finetuned_ground_truth_and_resume_after_an_interruption(target_dir, weights, tmp_path, monkeypatch):
    suite = _finetune_suite(target_dir, weights)

    class Stop(Exception):
        pass

    def stop_after_first_pair(event):
        if event.stage == "done" and event.done == 1:
            raise Stop

    with pytest.raises(Stop):
        run_benchmark(suite, out_dir=tmp_path, n_bootstrap=20, device="cpu", progress=stop_after_first_pair)
    [partial] = tmp_path.glob(".benchmark-tiny-finetune-*.partial.jsonl")
    stages = [json.loads(line)["stage"] for line in partial.read_text().splitlines()]
    assert stages == ["rank", "finetune", "linear_probe"]

    from service.pipeline.finetune import finetune as finetune_module

    calls = []
    real = finetune_module.finetune

    def counting(dataset, backbone, **kwargs):
        calls.append((backbone, kwargs["strategy"]))
        return real(dataset, backbone, **kwargs)

    monkeypatch.setattr(finetune_module, "finetune", counting)
    result = run_benchmark(suite, out_dir=tmp_path, n_bootstrap=20, device="cpu")
    assert calls == [(f"test_resnet@{weights}", "full"), (f"test_resnet@{weights}", "linear")]
    [target] = result["targets"]
    for row in target["backbones"]:
        acc = row["accuracy"]
        assert len(acc["per_seed"]) == 2 and 0.0 <= acc["mean"] <= 1.0 and acc["std"] is not None
        assert row["finetune"]["chosen_lr"] == 0.05 and row["finetune"]["seeds"] == [0, 1]
        assert 0.0 <= row["linear_probe_accuracy"] <= 1.0
        assert row["seconds"]["finetune"] > 0
    assert target["n_test_images"] == 18
    assert result["cost"]["ratio"] > 0
    assert not partial.exists()


def test_cli_benchmark_runs_a_suite_file_and_writes_the_report(target_dir, weights, tmp_path):
    ids = ("random:test_resnet", f"test_resnet@{weights}")
    suite_file = tmp_path / "mine.toml"
    suite_file.write_text(
        'name = "cli"\nground_truth = "published"\nestimators = ["logme", "h_score"]\n'
        f'[[targets]]\nname = "shapes"\ndataset = "{target_dir}"\n'
        f'[[backbones]]\nid = "{ids[0]}"\ninput_size = 32\n[[backbones]]\nid = "{ids[1]}"\ninput_size = 32\n'
        f'[published.shapes]\n"{ids[0]}" = 0.3\n"{ids[1]}" = 0.6\n',
        encoding="utf-8",
    )
    env = {**os.environ, "BACKBONE_RANK_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "service.cli", "benchmark", "--suite", str(suite_file), "--out-dir",
            str(tmp_path / "out"), "--bootstrap", "20", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Benchmark cli" in proc.stdout and "logme" in proc.stdout
    [json_file] = (tmp_path / "out").glob("benchmark-cli-*.json")
    html = json_file.with_suffix(".html")
    assert html.is_file() and "<table" in html.read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "service.cli", "benchmark", "--suite", "nope"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown suite 'nope'" in bad.stderr


def test_benchmark_module_exports() -> None:
    assert "run_benchmark" in benchmark_module.__all__
    assert {"summarize", "write_results", "environment_info"} <= set(results_module.__all__)


def test_the_effective_request_names_the_targets_and_sample_size_that_ran(target_dir, weights, tmp_path, monkeypatch):
    from service.contract import BenchmarkRequest
    from service.pipeline import engine, plugins
    from service.pipeline.runtime import Runtime

    def tiny(per_class: int | None) -> Suite:
        published = _published_suite(target_dir, weights)
        return Suite(**{**published.__dict__, "name": "tiny", "rank_max_per_class": per_class or 5})

    monkeypatch.setitem(plugins._suites, "tiny", (tiny, "one target, three backbones"))
    runtime = Runtime(cache_dir=tmp_path / "cache", builtin_dir=tmp_path / "builtin", device="cpu")
    result = engine.benchmark(BenchmarkRequest(suite="tiny", n_bootstrap=10), runtime, out_dir=None)
    assert result.request is not None
    assert result.request.targets == ["shapes"] and result.request.per_class == 5 and result.request.device == "cpu"
    # a suite file sizes its own splits: nothing to record
    suite_file = tmp_path / "mine.toml"
    suite_file.write_text(
        'name = "mine"\nground_truth = "published"\nestimators = ["logme"]\n'
        f'[[targets]]\nname = "shapes"\ndataset = "{target_dir}"\n'
        '[[backbones]]\nid = "random:test_resnet"\ninput_size = 32\n'
        '[[backbones]]\nid = "random:test_efficientnet"\ninput_size = 32\n'
        '[published.shapes]\n"random:test_resnet" = 0.3\n"random:test_efficientnet" = 0.6\n',
        encoding="utf-8",
    )
    result = engine.benchmark(BenchmarkRequest(suite=str(suite_file), n_bootstrap=10), runtime, out_dir=None)
    assert result.request is not None
    assert result.request.targets == ["shapes"] and result.request.per_class is None


def _forbid_work(monkeypatch) -> list[str]:
    """Record every fine-tuning and feature extraction the run starts (a reused pair needs neither)."""
    from service.pipeline.finetune import finetune as finetune_module

    calls: list[str] = []
    real_finetune, real_extract = finetune_module.finetune, benchmark_module.extract_features

    def finetune(dataset, backbone, **kwargs):
        calls.append(f"finetune {backbone} {kwargs['strategy']}")
        return real_finetune(dataset, backbone, **kwargs)

    def extract(dataset, backbones, **kwargs):
        calls.extend(f"extract {b.spec.id}" for b in backbones)
        return real_extract(dataset, backbones, **kwargs)

    monkeypatch.setattr(finetune_module, "finetune", finetune)
    monkeypatch.setattr(benchmark_module, "extract_features", extract)
    return calls


def test_reuse_takes_every_recorded_pair_as_it_was(target_dir, weights, tmp_path, monkeypatch):
    suite = _finetune_suite(target_dir, weights)
    first = run_benchmark(suite, out_dir=tmp_path / "a", n_bootstrap=20, device="cpu")
    recorded = json.loads(Path(first["files"]["json"]).read_text())
    assert recorded["targets"][0]["kind"] == "" and recorded["reused"] is None

    calls = _forbid_work(monkeypatch)
    again = run_benchmark(suite, out_dir=tmp_path / "b", n_bootstrap=20, device="cpu", reuse=[first["files"]["json"]])
    assert calls == []  # nothing ranked, nothing fine-tuned
    saved = json.loads(Path(again["files"]["json"]).read_text())
    assert saved["targets"][0]["backbones"] == recorded["targets"][0]["backbones"]  # seconds included
    assert saved["targets"][0]["n_test_images"] == recorded["targets"][0]["n_test_images"]
    assert saved["cost"]["finetune_seconds"] == pytest.approx(recorded["cost"]["finetune_seconds"])
    reused = saved["reused"]
    assert reused["files"] == [first["files"]["json"]] and reused["refused"] == []
    assert {(p["target"], p["backbone"]) for p in reused["pairs"]} == {("shapes", b.id) for b in suite.backbones}
    assert all(p["file"] == first["files"]["json"] for p in reused["pairs"])
    assert reused["recorded_seconds"]["finetune"] == pytest.approx(recorded["cost"]["finetune_seconds"])


def test_reuse_computes_only_what_the_record_lacks_or_did_otherwise(target_dir, weights, tmp_path, monkeypatch):
    suite = _finetune_suite(target_dir, weights)
    first = run_benchmark(suite, out_dir=tmp_path / "a", n_bootstrap=20, device="cpu")
    recorded = {r["id"]: r for r in first["targets"][0]["backbones"]}
    same, other = suite.backbones
    wider = Suite(
        **{
            **suite.__dict__,
            "name": "wider",
            "targets": (SuiteTarget("shapes", str(target_dir), "test", "shapes"),),
            # one pair as recorded, one at another input size (refused), one new backbone
            "backbones": (same, SuiteBackbone(other.id, input_size=40), SuiteBackbone("random:test_efficientnet", 32)),
        }
    )
    calls = _forbid_work(monkeypatch)
    result = run_benchmark(wider, out_dir=None, n_bootstrap=20, device="cpu", reuse=[first["files"]["json"]])
    # features of the two pairs not reused only (extraction names the canonical ids), and their fine-tunings
    assert len([c for c in calls if c.startswith("extract")]) == 2
    assert sorted(c for c in calls if c.startswith("finetune")) == sorted(
        f"finetune {b} {s}" for b in (other.id, "random:test_efficientnet") for s in ("full", "linear")
    )
    [target] = result["targets"]
    assert target["kind"] == "shapes"
    rows = {r["id"]: r for r in target["backbones"]}
    # as recorded, but for the default order's score, which ranks a row among the target's other backbones
    relative = {"default"}
    assert {k: v for k, v in rows[same.id].items() if k not in relative} == {
        k: v for k, v in recorded[same.id].items() if k not in relative
    }
    assert rows[other.id]["input_size"] == 40
    assert [(p["backbone"]) for p in result["reused"]["pairs"]] == [same.id]
    [refused] = result["reused"]["refused"]
    assert refused["backbone"] == other.id and refused["reason"] == "suite input_size 32 vs 40"


def test_reuse_with_other_estimators_rescores_and_fine_tunes_nothing(target_dir, weights, tmp_path, monkeypatch):
    suite = _finetune_suite(target_dir, weights)
    first = run_benchmark(suite, out_dir=tmp_path / "a", n_bootstrap=20, device="cpu")
    recorded = {r["id"]: r for r in first["targets"][0]["backbones"]}
    added = Suite(**{**suite.__dict__, "estimators": (*ESTIMATORS, "ridge_probe")})
    calls = _forbid_work(monkeypatch)
    result = run_benchmark(added, out_dir=tmp_path / "b", n_bootstrap=20, device="cpu", reuse=[first["files"]["json"]])
    # every backbone extracted and scored again (extraction names the canonical ids), none fine-tuned
    assert len(calls) == 2 and all(c.startswith("extract ") for c in calls)
    rows = {r["id"]: r for r in result["targets"][0]["backbones"]}
    for backbone_id, row in rows.items():
        was = recorded[backbone_id]
        assert row["accuracy"] == was["accuracy"] and row["linear_probe_accuracy"] == was["linear_probe_accuracy"]
        assert row["seconds"]["finetune"] == was["seconds"]["finetune"]
        assert 0.0 <= row["scores"]["ridge_probe"] <= 1.0
        assert {k: row["scores"][k] for k in ESTIMATORS} == pytest.approx({k: was["scores"][k] for k in ESTIMATORS})
    reused = result["reused"]
    assert reused["refused"] == [] and all(p["rescored"] is True for p in reused["pairs"])
    assert len(reused["pairs"]) == 2 and reused["recorded_seconds"]["rank"] == 0.0
    assert reused["recorded_seconds"]["finetune"] == pytest.approx(first["cost"]["finetune_seconds"])
    assert result["summary"]["ridge_probe"]["weighted_tau"]["n_targets"] == 1


def test_reuse_refuses_a_result_of_another_protocol(target_dir, weights, tmp_path):
    suite = _finetune_suite(target_dir, weights)
    first = run_benchmark(suite, out_dir=tmp_path, n_bootstrap=20, device="cpu")
    path = Path(first["files"]["json"])
    longer = Suite(**{**suite.__dict__, "finetune": FinetuneSpec(**{**suite.finetune.__dict__, "epochs": 2})})
    with pytest.raises(ValueError, match="fine-tuning differs: epochs 1 vs 2"):
        run_benchmark(longer, out_dir=None, device="cpu", reuse=[path])
    other_machine = json.loads(path.read_text())
    other_machine["environment"]["fingerprint"] = "gpu-torch9-timm9-00000000"
    moved = tmp_path / "other.json"
    moved.write_text(json.dumps(other_machine))
    with pytest.raises(ValueError, match="environment fingerprint gpu-torch9-timm9-00000000 differs"):
        run_benchmark(suite, out_dir=None, device="cpu", reuse=[moved])
    (tmp_path / "junk.json").write_text("[]")
    with pytest.raises(ValueError, match="not a benchmark result"):
        run_benchmark(suite, out_dir=None, device="cpu", reuse=[tmp_path / "junk.json"])


def test_the_default_order_and_its_p_best_are_scored_beside_the_estimators(target_dir, weights, tmp_path):
    from service.pipeline.calibration.model import AccuracyModel, Calibration, Fusion, fused_scores

    calibration = Calibration(
        accuracy={
            "finetune": [AccuracyModel(("class_means",), (0.2, 1.1), (-0.4, 0.3), n_train=30)],
            "linear_probe": None,
        },
        fusion=Fusion(("class_means", "logme"), (1.0, 1.0), "zscore", {"class_means": True, "logme": True}),
        source={"results": []},
        created="2026-12-06T00:00:00Z",
    )
    suite = _published_suite(target_dir, weights)
    result = run_benchmark(suite, out_dir=tmp_path, n_bootstrap=20, device="cpu", calibration=calibration, p_best=4)
    [target] = result["targets"]
    rows = target["backbones"]
    expected = fused_scores([r["scores"] for r in rows], calibration.fusion)
    assert [r["default"] for r in rows] == pytest.approx(list(expected))
    assert all(r["predicted_accuracy"]["finetune"]["inputs"] == ["class_means"] for r in rows)
    assert sum(r["p_best"] for r in rows) == pytest.approx(1.0)
    assert target["p_best"]["n_bootstrap"] == 4 and target["default_order"]["members"] == ["class_means", "logme"]
    assert result["default_order"]["calibration"]["created"] == "2026-12-06T00:00:00Z"
    assert result["summary"]["default"]["is_product"] and result["summary"]["predicted_accuracy"]["is_product"]
    check = result["p_best_check"]
    assert check["n_targets"] == 1 and check["n_bootstrap"] == 4 and check["seconds"] > 0
    assert check["n_confident"] + check["n_unconfident"] == 1
    assert result["ground_truth_flags"] == []  # published accuracies: no linear probe to compare with
    with Path(result["files"]["csv"]).open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [float(line["default"]) for line in table] == pytest.approx([r["default"] for r in rows])
    assert [float(line["p_best"]) for line in table] == pytest.approx([r["p_best"] for r in rows])
    from service.contract import BenchmarkResult

    assert BenchmarkResult.model_validate(result).summary["default"].is_product
