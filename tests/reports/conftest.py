"""Shared, expensive inputs of the report tests: built (and rendered) once per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from service.reports import render_report

from .builders import benchmark_result, ranking_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Class names are user input: this one must show as text, never become markup.
EVIL_CLASS = '<script>alert("x")</script> & co'


@pytest.fixture(scope="session")
def benchmark() -> dict[str, Any]:
    return benchmark_result()


@pytest.fixture(scope="session")
def benchmark_html(benchmark: dict[str, Any]) -> str:
    return render_report(benchmark)


@pytest.fixture(scope="session")
def ranking(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root: Path = tmp_path_factory.mktemp("ranking-data")
    return ranking_result(root, classes=("cat", "dog", EVIL_CLASS))


@pytest.fixture(scope="session")
def ranking_html(ranking: dict[str, Any]) -> str:
    return render_report(ranking)
