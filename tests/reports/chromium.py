"""Drive a real headless Chromium from tests: screenshot a page, dump the DOM it parsed and rendered.

Reusable by any test (reports written to files, pages served by uvicorn)::

    from tests.reports.chromium import dump_dom, screenshot

    png = screenshot("http://127.0.0.1:8000/reports/...", tmp_path / "page.png")
    dom = dump_dom("file:///tmp/report.html")

Chromium is Debian's ``chromium`` package (``/usr/bin/chromium``), installed by ``make test`` (target
``chromium``) when absent. A missing browser fails the test instead of skipping it: the browser check
is part of the suite, not an optional extra.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

__all__ = ["CHROMIUM_FLAGS", "chromium_path", "dump_dom", "screenshot"]

#: Headless, no sandbox (containers run as root), and nothing that talks to the network on its own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
_TIMEOUT_S = 120
#: Where Debian's package puts it.
DEFAULT_PATH = "/usr/bin/chromium"


def chromium_path() -> str:
    """The chromium executable (``$CHROMIUM``, else ``chromium`` on the PATH, else ``/usr/bin/chromium``).

    Fails the calling test when there is none, with the command that installs it.
    """
    candidates = [os.environ.get("CHROMIUM"), shutil.which("chromium"), DEFAULT_PATH]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "headless Chromium is required by the report tests but was not found; install it with `make chromium` "
        "(apt-get install -y chromium) or point $CHROMIUM at the executable",
        pytrace=False,
    )


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        try:
            completed = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"chromium did not finish within {timeout:.0f} s: {' '.join(command)}", pytrace=False)
    if completed.returncode != 0:
        stderr = completed.stderr.decode("utf-8", "replace")[-3000:]
        pytest.fail(f"chromium exited with {completed.returncode}: {' '.join(command)}\n{stderr}", pytrace=False)
    return completed


def screenshot(
    url: str, path: Path, *, window_size: tuple[int, int] = (1280, 2000), timeout: float = _TIMEOUT_S
) -> Path:
    """Load ``url`` in headless Chromium and write a PNG screenshot of the window to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    completed = _run([f"--screenshot={path}", f"--window-size={window_size[0]},{window_size[1]}", url], timeout)
    if not path.is_file():
        stderr = completed.stderr.decode("utf-8", "replace")[-3000:]
        pytest.fail(f"chromium wrote no screenshot to {path}\n{stderr}", pytrace=False)
    return path


def dump_dom(url: str, *, timeout: float = _TIMEOUT_S) -> str:
    """Load ``url`` in headless Chromium and return the serialised DOM after parsing and layout."""
    completed = _run(["--dump-dom", url], timeout)
    return completed.stdout.decode("utf-8", "replace")
