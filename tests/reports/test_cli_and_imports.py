"""`backbone-rank report` end to end in a subprocess, and service.reports importing no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from .builders import finetune_result
from .htmltools import parse

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "report", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )


def test_report_command_writes_html_next_to_the_json_or_to_output(tmp_path, ranking):
    # A real subprocess once (the module behind the console script), then the other cases in process.
    finetune_file = tmp_path / "finetune.json"
    finetune_file.write_text(json.dumps(finetune_result()), encoding="utf-8")
    completed = _cli(str(finetune_file))
    assert completed.returncode == 0, completed.stderr
    written = tmp_path / "finetune.html"
    assert f"wrote {written}" in " ".join(completed.stdout.split())
    doc = parse(written.read_text(encoding="utf-8"))
    assert doc.find("h1").text.startswith("Fine-tune: ") and len(doc.find_all("img")) == 1

    result_file = tmp_path / "ranking.json"
    result_file.write_text(json.dumps(ranking), encoding="utf-8")
    out = tmp_path / "reports" / "rank.html"
    out.parent.mkdir()
    code, stderr = _cli_in_process(str(result_file), "-o", str(out))
    assert code == 0, stderr
    doc = parse(out.read_text(encoding="utf-8"))
    assert len(doc.find("table", id="ranking-table").find("tbody").find_all("tr")) == 2
    assert not (tmp_path / "ranking.html").exists()


def _cli_in_process(*args: str) -> tuple[int, str]:
    """Exit code and stderr of ``backbone-rank report ...`` run in this process (no interpreter start-up)."""
    from typer.testing import CliRunner

    from service.cli import app

    result = CliRunner().invoke(app, ["report", *args], env={"COLUMNS": "200"})
    return result.exit_code, " ".join(result.stderr.split())


def test_report_command_rejects_missing_invalid_and_unknown_results(tmp_path):
    code, stderr = _cli_in_process(str(tmp_path / "nope.json"))
    assert code == 2
    assert stderr.startswith("error [invalid_result]: cannot read") and "No such file or directory" in stderr

    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    code, stderr = _cli_in_process(str(broken))
    assert code == 2 and stderr.startswith("error [invalid_result]: cannot read") and "JSONDecodeError" in stderr

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": "world"}), encoding="utf-8")
    code, stderr = _cli_in_process(str(other), "-o", str(tmp_path / "out.html"))
    assert code == 2 and stderr.startswith("error [invalid_result]: not a backbone-rank result")
    assert "got keys: hello" in stderr
    assert not list(tmp_path.glob("*.html"))


def test_reports_import_neither_torch_nor_timm_nor_pyplot():
    # The web process serves reports and never imports torch; rendering must not pull it in either.
    code = textwrap.dedent(
        """
        import sys
        import service.reports
        from service.reports import render_report
        from tests.reports.builders import finetune_result
        html = render_report(finetune_result())
        assert "<img" in html
        heavy = sorted(m for m in ("torch", "timm", "torchvision", "matplotlib.pyplot") if m in sys.modules)
        print("imported:", heavy)
        sys.exit(1 if heavy else 0)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "imported: []" in completed.stdout
