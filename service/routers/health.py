"""Liveness, readiness and Prometheus metrics. ``/healthz`` is always open; with API keys configured,
``/readyz`` and ``/metrics`` need one unless listed in ``BACKBONE_RANK_PUBLIC_PATHS`` (service/middleware.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import SettingsDep, StoreDep, api_key_scheme

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    # async: answered on the event loop, never queued behind the thread pool's store reads under load
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the job store takes writes and a worker sent a heartbeat recently",
    dependencies=[Depends(api_key_scheme)],
    responses={503: {"description": "Not ready: `{code: not_ready, detail, checks}`"}},
)
def readyz(store: StoreDep, settings: SettingsDep) -> Any:
    checks: dict[str, Any] = {}
    try:
        store.check_writable()
        checks["store"] = "ok"
    except Exception as err:  # any failure to write means not ready; say which
        checks["store"] = f"not writable: {type(err).__name__}: {err}"
    workers = store.live_workers(worker_max_age(settings)) if checks["store"] == "ok" else []
    checks["workers"] = len(workers)
    problems = [] if checks["store"] == "ok" else ["the job store does not take writes"]
    if not workers:
        problems.append("no worker has sent a heartbeat recently; start one with `backbone-rank worker`")
    if problems:
        return JSONResponse(
            {"code": "not_ready", "detail": "; ".join(problems), "checks": checks},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return {"status": "ready", "checks": checks}


def worker_max_age(settings: Any) -> float:
    """A worker is alive when its last heartbeat is younger than this (an idle worker beats every poll)."""
    return max(float(settings.job_lease_seconds), 3 * float(settings.worker_poll_seconds))


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, dependencies=[Depends(api_key_scheme)]
)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
