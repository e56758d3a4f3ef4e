"""The benchmark scripts (``make bench``) write to the cache by default, never over the recorded results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_speed_benchmark_defaults_to_the_cache_dir(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BACKBONE_RANK_BENCHMARK_RESULTS_DIR"}
    env["BACKBONE_RANK_CACHE_DIR"] = str(tmp_path / "cache")
    recorded_before = sorted(p.name for p in (ROOT / "benchmarks" / "results").iterdir())
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "speed_estimators.py"),
         "--n", "300", "--d", "24", "--c", "4", "--repeats", "1", "--suite-only"],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    [written] = (tmp_path / "cache" / "benchmarks").glob("speed_estimators-n300-d24-c4-*.json")
    assert str(written) in completed.stdout
    assert sorted(p.name for p in (ROOT / "benchmarks" / "results").iterdir()) == recorded_before


def test_make_bench_record_is_the_explicit_way_into_benchmarks_results():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    bench = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    assert "--out" not in bench  # the default: <cache dir>/benchmarks
    record = makefile.split("\nbench-record:", 1)[1].split("\n\n", 1)[0]
    assert "--out benchmarks/results" in record
