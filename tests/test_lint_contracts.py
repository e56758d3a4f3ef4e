"""The import contracts ([tool.importlinter] in pyproject.toml) hold: `make lint` checks them, and so does pytest.

They say that ``estimators`` stands alone (no ``service``, torch only in its optional torch backend), that the
web process never imports torch/timm/torchvision, and that the engine (``service.pipeline``) imports neither the
API nor the CLI. Static (grimp reads the imports, function-local ones included): a second or two.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"  # installed with the dev extra
    assert lint_imports.is_file(), f"{lint_imports} is missing: install the dev extra (pip install -e '.[dev]')"
    completed = subprocess.run([str(lint_imports)], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-2000:]
    assert "0 broken" in completed.stdout
