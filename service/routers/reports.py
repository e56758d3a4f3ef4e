"""``/reports/...``: HTML pages of finished rankings and fine-tunes, and of recorded benchmark results."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from service.deps import SettingsDep, StoreDep, api_key_scheme
from service.errors import InvalidResult, JobCorrupt, JobNotSucceeded, ReportNotFound

from . import _jobs

router = APIRouter(prefix="/reports", tags=["reports"], dependencies=[Depends(api_key_scheme)])

_ERRORS = _jobs.error_responses(401, 404, 409, 422)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def _succeeded_result(store: Any, kind: str, job_id: str) -> dict[str, Any]:
    job = _jobs.get_job(store, kind, job_id)
    if job.unreadable:
        raise JobCorrupt(job.error["detail"] if job.error else f"{kind} {job_id} cannot be read", job_id=job_id)
    if job.state != "succeeded" or job.result is None:
        raise JobNotSucceeded(f"{kind} {job_id} is {job.state}; its report exists once it succeeded", state=job.state)
    return job.result


@router.get("/rankings/{job_id}", response_class=HTMLResponse, responses=_ERRORS)
def ranking_report(job_id: str, store: StoreDep) -> HTMLResponse:
    """The ranked table and the per-estimator bar charts of a succeeded ranking."""
    from service.reports import render_ranking_report

    return HTMLResponse(render_ranking_report(_succeeded_result(store, "ranking", job_id)))


@router.get("/finetunes/{job_id}", response_class=HTMLResponse, responses=_ERRORS)
def finetune_report(job_id: str, store: StoreDep) -> HTMLResponse:
    from service.reports import render_finetune_report

    return HTMLResponse(render_finetune_report(_succeeded_result(store, "finetune", job_id)))


def _benchmark_files(settings: Any) -> dict[str, Path]:
    """``name -> file`` of the JSON files in the configured results dir (other recorded results, such as
    speed benchmarks, are filtered out by the index, not here)."""
    directory = settings.benchmark_results_dir
    if directory is None or not Path(directory).is_dir():
        return {}
    return {p.stem: p for p in sorted(Path(directory).glob("*.json")) if _NAME.fullmatch(p.stem)}


def _read_result(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as err:
        raise InvalidResult(f"benchmark result {path.stem!r} cannot be read as JSON ({type(err).__name__})") from None


@router.get("/benchmarks", response_class=HTMLResponse, responses=_ERRORS)
def benchmark_index(settings: SettingsDep) -> HTMLResponse:
    """Links to every recorded benchmark result."""
    from html import escape

    names = []
    for name, path in _benchmark_files(settings).items():
        try:
            result = _read_result(path)
        except InvalidResult:
            continue
        if isinstance(result, dict) and result.get("kind") == "benchmark":
            names.append(name)
    items = "".join(f'<li><a href="/reports/benchmarks/{escape(n)}">{escape(n)}</a></li>' for n in names)
    body = f"<ul>{items}</ul>" if items else "<p>No benchmark results recorded yet.</p>"
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Benchmark results</title></head>"
        f"<body><h1>Benchmark results</h1>{body}</body></html>"
    )


@router.get("/benchmarks/{name}", response_class=HTMLResponse, responses=_ERRORS)
def benchmark_report(name: str, settings: SettingsDep) -> HTMLResponse:
    """A recorded benchmark result (``<benchmark_results_dir>/<name>.json``) as its report page."""
    from service.reports import render_benchmark_report, result_kind

    files = _benchmark_files(settings)
    path = files.get(name) if _NAME.fullmatch(name) else None
    if path is None:
        known = ", ".join(files) or "none"
        raise ReportNotFound(f"no benchmark result named {name!r}; recorded: {known}", name=name)
    # The listing came from a glob of the configured directory; re-check after resolving symlinks.
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(settings.benchmark_results_dir or '')):
        raise ReportNotFound(f"no benchmark result named {name!r}", name=name)
    result = _read_result(path)
    if result_kind(result) != "benchmark":
        raise InvalidResult(f"{name!r} is a recorded result, but not a benchmark result (kind {result_kind(result)})")
    return HTMLResponse(render_benchmark_report(result))
