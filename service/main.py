"""The HTTP API: ``create_app(settings) -> FastAPI``.

Run it with ``backbone-rank serve`` (uvicorn on 127.0.0.1 plus worker processes) or
``uvicorn --factory service.main:create_app``. The web process validates, enqueues and reads jobs; it
never runs one and never imports torch (workers do, see :mod:`service.jobs.worker`).

Errors are always ``{"code", "detail"}`` with a stable code (:mod:`service.errors`); bad input is a
4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.config import Settings, get_settings
from service.errors import BackboneRankError, NotReady, QueueFull, Unauthorized
from service.jobs.store import JobStore, json_safe
from service.metrics import Metrics, MetricsMiddleware
from service.middleware import BodyLimitMiddleware
from service.routers import catalog, finetunes, health, rankings, reports
from service.routers.health import worker_max_age

__all__ = ["create_app"]

_logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def _unique_id(route: APIRoute) -> str:
    # Stable operation ids for generated clients: "<tag>-<function name>".
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def _error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(json_safe(body), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BackboneRankError)
    async def typed_error(request: Request, err: BackboneRankError) -> JSONResponse:
        headers = None
        if isinstance(err, QueueFull | NotReady):
            headers = {"Retry-After": "30" if isinstance(err, QueueFull) else "5"}
        elif isinstance(err, Unauthorized):
            headers = {"WWW-Authenticate": "ApiKey"}
        return _error_response(err.status, err.to_dict(), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in err.errors()
        ]
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        return _error_response(
            422, {"code": "invalid_request", "detail": summary or "invalid request", "errors": errors}
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(err.status_code, "http_error")
        detail = err.detail if isinstance(err.detail, str) else str(err.detail)
        if err.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}; see /docs for the API"
        return _error_response(err.status_code, {"code": code, "detail": detail}, dict(err.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        _logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(500, {"code": "internal_error", "detail": "unexpected server error; see the server log"})


async def _reaper(store: JobStore, every: float) -> None:
    """Expire stale leases even when no worker is alive to do it at its next claim: a job whose worker
    died is requeued (or failed with ``worker_lost``) instead of showing ``running`` forever."""
    while True:
        await asyncio.sleep(every)
        try:
            await anyio.to_thread.run_sync(store.expire_leases)
            await anyio.to_thread.run_sync(store.prune_workers, 3600.0)  # forget workers gone for an hour
        except Exception:  # a busy store now is no reason to stop reaping later
            _logger.warning("lease reaper: store unavailable", exc_info=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI application for ``settings`` (default: :func:`~service.config.get_settings`).

    The lifespan opens (and creates) the job store at ``settings.database_path`` and runs the lease
    reaper; nothing is opened at import time.
    """
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = JobStore(
            settings.database_path or settings.cache_dir / "jobs.sqlite3",
            lease_seconds=settings.job_lease_seconds,
            max_attempts=settings.max_job_attempts,
        )
        await anyio.to_thread.run_sync(store.initialize)
        app.state.store = store
        reaper = asyncio.create_task(_reaper(store, min(settings.job_lease_seconds / 2, 10.0)))
        _logger.info("API ready (store %s)", store.path)
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            app.state.store = None
            store.close()

    app = FastAPI(
        title="backbone-rank",
        summary="Training-free backbone ranking as a service: durable jobs, progress events, reports.",
        version="1",
        lifespan=lifespan,
        generate_unique_id_function=_unique_id,
    )
    app.state.settings = settings
    app.state.store = None
    app.state.metrics = Metrics(lambda: app.state.store, worker_max_age=worker_max_age(settings))
    _install_error_handlers(app)
    for module in (health, catalog, rankings, finetunes, reports):
        app.include_router(module.router)
    # Added last = outermost: metrics see every response, the 413s of the body limit included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
