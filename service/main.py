"""The HTTP API: ``create_app(settings) -> FastAPI``.

Run it with ``backbone-rank serve`` (uvicorn on 127.0.0.1 plus worker processes) or
``uvicorn --factory service.main:create_app``. The web process validates, enqueues and reads jobs; it
never runs one and never imports torch (workers do, see :mod:`service.jobs.worker`).

Errors are always ``{"code", "detail"}`` with a stable code (:mod:`service.errors`); bad input is a
4xx, never a 500. A body that cannot be parsed (malformed JSON, invalid UTF-8, nested too deeply) is a 422
``invalid_request`` like any other invalid body, and the OpenAPI document gives every error status that one
shape (``ErrorBody``).
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
from service.errors import (
    BackboneRankError,
    NotReady,
    QueueFull,
    QuotaExceeded,
    TooManyStreams,
    UploadDiskFull,
    UploadTooLarge,
)
from service.jobs.store import JobStore, json_safe
from service.metrics import Metrics, MetricsMiddleware
from service.middleware import ALWAYS_OPEN, ApiKeyMiddleware, BodyLimitMiddleware
from service.routers import catalog, datasets, finetunes, health, page, rankings, reports
from service.routers.health import worker_max_age
from service.schemas import ErrorBody
from service.streams import JobStreams
from service.uploads.store import UploadStore

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


#: Why a body failed to parse, by the parser's exception (FastAPI turns these into a bare 400).
_UNPARSEABLE: dict[type[BaseException], str] = {
    UnicodeDecodeError: "is not valid UTF-8",
    RecursionError: "is nested too deeply",
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
        if isinstance(err, QueueFull | QuotaExceeded | NotReady | TooManyStreams):
            headers = {"Retry-After": "5" if isinstance(err, NotReady | TooManyStreams) else "30"}
        elif isinstance(err, UploadTooLarge | UploadDiskFull):
            headers = {"Connection": "close"}  # the rest of the body is never read
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
        if err.status_code == 400 and err.__cause__ is not None:
            # FastAPI's "There was an error parsing the body" (raised from the parser's exception): the same
            # 422 invalid_request as a JSON syntax error, which FastAPI reports as a validation error.
            msg = _UNPARSEABLE.get(type(err.__cause__), "cannot be parsed as JSON")
            error = {"loc": ["body"], "msg": f"the request body {msg}", "type": "json_invalid"}
            return _error_response(422, {"code": "invalid_request", "detail": error["msg"], "errors": [error]})
        code = _HTTP_CODES.get(err.status_code, "http_error")
        detail = err.detail if isinstance(err.detail, str) else str(err.detail)
        if err.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}; see /docs for the API"
        return _error_response(err.status_code, {"code": code, "detail": detail}, dict(err.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        _logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(500, {"code": "internal_error", "detail": "unexpected server error; see the server log"})


class _App(FastAPI):
    """FastAPI whose OpenAPI document gives every error response the one shape the handlers answer with."""

    #: Paths that answer without a key (None: no keys configured, every path is open).
    open_paths: frozenset[str] | None = None

    def openapi(self) -> dict[str, Any]:
        fresh = self.openapi_schema is None
        schema = super().openapi()
        if fresh:
            _one_error_shape(schema, self.open_paths)
        return schema


def _one_error_shape(schema: dict[str, Any], open_paths: frozenset[str] | None) -> None:
    """Every 4xx/5xx of every operation as ``application/json`` :class:`~service.schemas.ErrorBody` (FastAPI would
    document its own validation-error shape, and the route's media type for HTML and event-stream routes); a 401
    wherever a key is needed, 413 and 422 wherever a body or parameters are taken."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(body_schema.pop("$defs", {}))
    components["ErrorBody"] = body_schema
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if open_paths is not None and path not in open_paths:
                responses.setdefault("401", {"description": "Missing or wrong X-API-Key: `unauthorized`"})
            if "requestBody" in operation:
                responses.setdefault("413", {"description": "Request body too large: `request_too_large`"})
            if "requestBody" in operation or operation.get("parameters"):
                responses.setdefault("422", {"description": "Invalid request: `invalid_request` or a specific code"})
            for status, response in responses.items():
                if status[:1] in "45":
                    response["content"] = content


#: How often the web process looks for running jobs whose worker process died on this host (a read; a write only
#: when there is one to take back).
DEAD_WORKER_SWEEP_S = 1.0


async def _reaper(store: JobStore, every: float, stop: asyncio.Event) -> None:
    """Expire stale leases (every ``every`` seconds) even when no worker is alive to do it at its next claim, and
    take back the jobs of dead worker processes on this host every :data:`DEAD_WORKER_SWEEP_S`: a job whose worker
    died is requeued (or failed with ``worker_lost``) instead of showing ``running`` until its lease ends.

    Stopped by ``stop``, never cancelled: a cancelled task does not wait for the store call its thread is making,
    and closing the store's connections under that call crashes the process (a segfault in sqlite3, seen when a
    test's app shut down mid-sweep)."""
    tick = min(every, DEAD_WORKER_SWEEP_S)
    since_expiry = 0.0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), tick)
        if stop.is_set():
            return
        since_expiry += tick
        try:
            await anyio.to_thread.run_sync(store.reclaim_dead)
            if since_expiry >= every:
                since_expiry = 0.0
                await anyio.to_thread.run_sync(store.expire_leases)
                await anyio.to_thread.run_sync(store.prune_workers, 3600.0)  # forget workers gone for an hour
        except Exception:  # a busy store now is no reason to stop reaping later
            _logger.warning("lease reaper: store unavailable", exc_info=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI application for ``settings`` (default: :func:`~service.config.get_settings`).

    The lifespan opens (and creates) the job store at ``settings.database_path``, removes expired uploads, runs
    the lease reaper and holds the pollers of the jobs followed by event streams (service/streams.py); nothing is
    opened at import time.
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
        await anyio.to_thread.run_sync(app.state.uploads.purge_expired)
        app.state.streams = JobStreams(
            store,
            max_streams=settings.max_event_streams,
            max_streams_per_key=settings.max_event_streams_per_key if settings.api_keys else None,
        )
        stop_reaper = asyncio.Event()
        reaper = asyncio.create_task(_reaper(store, min(settings.job_lease_seconds / 2, 10.0), stop_reaper))
        _logger.info("API ready (store %s)", store.path)
        try:
            yield
        finally:
            stop_reaper.set()
            await reaper  # its store call in flight finishes before the store is closed below
            await app.state.streams.close()
            app.state.store = None
            store.close()

    app = _App(
        title="backbone-rank",
        summary="Training-free backbone ranking as a service: durable jobs, progress events, reports.",
        version="1",
        lifespan=lifespan,
        generate_unique_id_function=_unique_id,
    )
    app.state.settings = settings
    app.state.store = None
    app.state.uploads = UploadStore(settings)
    app.open_paths = ALWAYS_OPEN | frozenset(settings.public_paths) if settings.api_keys else None
    app.state.metrics = Metrics(lambda: app.state.store, worker_max_age=worker_max_age(settings))
    _install_error_handlers(app)
    # catalog before datasets: its GET /v1/datasets/builtin is matched before /v1/datasets/{id}
    for module in (health, catalog, datasets, rankings, finetunes, reports, page):
        app.include_router(module.router)
    # Added last = outermost: metrics see every response, the 401s and 413s included; the key is checked before
    # the body limit, so a client without a key learns nothing but 401.
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_request_bytes, streamed_paths=[datasets.UPLOAD_PATH]
    )
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys, public_paths=settings.public_paths)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
