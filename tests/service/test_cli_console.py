"""The CLI's tables are not cut at 80 columns when stdout is not a terminal (piped, redirected)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _estimators(tmp_path: Path, **env: str) -> str:
    """``backbone-rank estimators`` in a subprocess whose stdout is a pipe (not a terminal)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_TERMINAL")}
    environ.update(HF_HUB_OFFLINE="1", BACKBONE_RANK_CACHE_DIR=str(tmp_path / "cache"), **env)
    completed = subprocess.run(
        [sys.executable, "-m", "service.cli", "estimators"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environ,
        timeout=300,
        check=True,
    )
    return completed.stdout


def test_piped_tables_are_not_truncated(tmp_path):
    out = _estimators(tmp_path)
    assert "…" not in out
    # every cell on one line, whole: a parameter and a long reference
    row = next(line for line in out.splitlines() if "class_means" in line)
    assert "output='accuracy'" in row
    assert "Seddik & Tamaazousti, Neural Networks Classify through the Class-Wise Means of Their Representations" in row


def test_an_explicit_columns_is_honoured(tmp_path):
    out = _estimators(tmp_path, COLUMNS="80")
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" in out


def test_in_process_runner_output_is_not_truncated(monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app

    monkeypatch.delenv("COLUMNS", raising=False)
    result = CliRunner().invoke(app, ["estimators"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout and "output='accuracy'" in result.stdout
