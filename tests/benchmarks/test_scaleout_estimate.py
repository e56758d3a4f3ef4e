"""The 8-GPU ranking estimate (benchmarks/scaleout_estimate.py) on the packaged catalogue: its rule and its sums."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from service.model_catalogue import load_model_catalogue

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "scaleout_estimate.py"


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("scaleout_estimate", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is built
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_fifty_distinct_candidates_from_the_four_families_best_first(script):
    chosen = script.choose_candidates(load_model_catalogue())
    assert len({e.id for e in chosen}) == 50
    families = {e.family for e in chosen}
    assert families == {"resnet", "convnext", "efficientnet", "vit"}
    assert max(sum(e.family == f for e in chosen) for f in families) <= script.PER_FAMILY
    assert all(e.gpu_img_per_s and e.params_m <= script.MAX_PARAMS_M for e in chosen)
    top1 = [e.imagenet_top1 for e in chosen]
    assert top1 == sorted(top1, reverse=True)


def test_totals_are_positive_and_gpu_time_halves_with_twice_the_gpus(script):
    chosen = script.choose_candidates(load_model_catalogue())
    a = script.Assumptions(scoring_s_at_ref=script.scoring_seconds_at_ref())
    assert a.scoring_s_at_ref > 0
    eight = script.estimate(chosen, script.IMAGENET_TRAIN, a)
    sixteen = script.estimate(chosen, script.IMAGENET_TRAIN, replace(a, gpus=2 * a.gpus))
    for key in ("gpu_s", "decode_s", "extraction_s", "scoring_all_cores_s", "total_all_cores_s", "total_s"):
        assert eight[key] > 0
    assert sixteen["gpu_s"] == pytest.approx(eight["gpu_s"] / 2, rel=1e-12)
    assert sum(g["models"] for g in eight["groups"]) == 50
    assert eight["extraction_full_overlap_s"] <= eight["extraction_s"] <= eight["gpu_s"] + eight["decode_s"]
    assert eight["total_all_cores_s"] <= eight["total_s"]
    separate = script.estimate(chosen, script.IMAGENET_TRAIN, replace(a, separate_mean_std=True))
    assert len(separate["groups"]) == 50 and separate["decode_s"] > eight["decode_s"]


def test_the_script_writes_its_json_and_tables(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, check=True, timeout=120
    )
    (result_file,) = tmp_path.glob("scaleout_estimate-50m-8gpu-eff0.8.json")
    result = json.loads(result_file.read_text())
    assert len(result["candidates"]) == 50
    assert [r["images"] for r in result["estimates"]] == [1_281_167, 50_000, 100_000]
    assert "| ImageNet-1k train | 1,281,167 |" in completed.stdout
    assert result["summary"] in completed.stdout
