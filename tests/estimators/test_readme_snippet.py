"""The README's estimator snippet runs as a script and prints its scores (it must not rely on a REPL's echo)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _estimator_snippet() -> str:
    section = README.read_text(encoding="utf-8").split("## The estimator library", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match, "no python block in the README's estimator section"
    return match.group(1)


def test_readme_estimator_snippet_prints_its_scores(tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(_estimator_snippet(), encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300, check=True
    )
    lines = completed.stdout.splitlines()
    float(lines[0])  # logme
    float(lines[-1])  # leep
    assert any(line.split()[0] == "class_means" for line in lines[1:-1])
    assert len(lines) >= 10
