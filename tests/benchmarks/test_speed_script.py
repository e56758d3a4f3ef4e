"""The speed benchmark script runs end to end and records ratios to its floor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_speed_benchmark_writes_ratios(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "speed_estimators.py"),
         "--n", "300", "--d", "24", "--c", "4", "--repeats", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    (result_file,) = tmp_path.glob("speed_estimators-n300-d24-c4-*.json")
    result = json.loads(result_file.read_text())
    rows = result["rows"]
    assert rows["floor (FᵀF + eigh)"]["x_floor"] == 1.0
    for name in ("logme", "sfda", "suite of 8, one shared Statistics", "thuml/LogME default algorithm (reference)"):
        assert rows[name]["seconds"] > 0 and rows[name]["x_floor"] > 0
        assert rows[name]["peak_mib"] > 0
    assert "| suite of 8, one shared Statistics |" in completed.stdout


def test_extraction_benchmark_reports_throughput_and_single_decodes(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "speed_extraction.py"), "--images", "12", "--batch-size", "4",
         "--repeats", "1", "--models", "test_resnet", "--out", str(tmp_path)],
        capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600,
    )
    (result_file,) = tmp_path.glob("speed_extraction-*.json")
    result = json.loads(result_file.read_text())
    row = result["rows"]["test_resnet"]
    assert row["raw_img_s"] > 0 and row["pipeline_img_s"] > 0
    decode = result["decode_count"]
    assert decode["one_preprocessing"] and len(decode["backbones"]) == 4
    assert decode["decodes"] == decode["images"] == 12
    assert "pipeline / raw" in completed.stdout


def test_gpu_check_runs_its_whole_protocol_on_the_cpu_and_says_so_without_a_gpu(tmp_path):
    script = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    small = ["--models", "test_resnet,test_vit", "--size", "32", "--batch-size", "8", "--images", "24",
             "--raw-seconds", "0.5", "--estimator-size", "400,32,4", "--out", str(tmp_path)]  # fmt: skip
    completed = subprocess.run(
        [*script, "--device", "cpu", *small], capture_output=True, text=True, check=True, cwd=ROOT, env=env,
        timeout=600,
    )
    (result_file,) = tmp_path.glob("gpu_check-*.json")
    result = json.loads(result_file.read_text())
    assert set(result["models"]) == {"test_resnet", "test_vit"}
    for row in result["models"].values():
        assert row["raw"]["images_per_s"] > 0 and row["pipeline"]["images"] == 24
        assert row["pipeline_over_raw"] == row["pipeline"]["images_per_s"] / row["raw"]["images_per_s"]
    estimators = result["estimators"]
    assert (estimators["n"], estimators["d"], estimators["c"]) == (400, 32, 4) and len(estimators["estimators"]) == 8
    assert estimators["max_relative_difference"] < 1e-6  # the torch backend's promise
    assert "written:" in completed.stdout
    import torch

    if not torch.cuda.is_available():
        refused = subprocess.run([*script, *small], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        assert refused.returncode == 2 and "no CUDA device here" in refused.stderr
