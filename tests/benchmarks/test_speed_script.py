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
