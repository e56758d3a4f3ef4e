"""The load script runs end to end against a real server it starts on 127.0.0.1, and reports latencies as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_load_script_reports_latencies_and_no_errors(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "load_status.py"), "--clients", "3", "--seconds", "2"]
    command += ["--history", "3", "--streams", "2", "--interval", "0.1", "--out", str(tmp_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (result_file,) = tmp_path.glob("load_status-c3-i0.1-h3-s2.json")
    result = json.loads(result_file.read_text())
    assert result["errors"] == 0 and result["requests"] > 0 and result["job_state_after"] == "running"
    for name in ("all reads", "status", "list", "healthz"):
        row = result["latency"][name]
        assert row["n"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert result["bytes"]["list"] < 3 * 1500  # three summaries, not three results
    assert "| all reads |" in completed.stdout
