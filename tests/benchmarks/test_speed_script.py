"""The speed benchmark script runs end to end and records ratios to its floor."""

from __future__ import annotations

import json
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
