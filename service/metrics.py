"""Prometheus metrics of one app instance (its own registry: no module-level singletons).

* ``backbone_rank_http_requests_total{route, method, status}`` and
  ``backbone_rank_http_request_duration_seconds{route, method}``: measured by an ASGI middleware; the
  route is the path template (``/v1/rankings/{job_id}``), never the raw path, so ids do not explode the
  label space.
* ``backbone_rank_jobs{kind, state}``: read from the job store at every scrape (so it is right across
  processes and restarts).
* ``backbone_rank_workers_alive``: workers with a fresh heartbeat.
* ``backbone_rank_feature_cache_hits_total``, ``..._feature_cache_misses_total``,
  ``backbone_rank_extraction_seconds_total``: counters the workers add to when a ranking succeeds, taken
  from its result (per backbone: served from the feature cache or extracted, and the extraction time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.jobs.store import JobStore

__all__ = ["Metrics", "MetricsMiddleware"]

_logger = logging.getLogger(__name__)

_STORE_COUNTERS = {
    "feature_cache_hits": "Backbones of succeeded rankings whose features came from the feature cache.",
    "feature_cache_misses": "Backbones of succeeded rankings whose features were extracted.",
    "extraction_seconds": "Seconds spent extracting features in succeeded rankings (cache misses only).",
}


class _StoreCollector(Collector):
    def __init__(self, store: Callable[[], JobStore | None], worker_max_age: float) -> None:
        self._store = store
        self._worker_max_age = worker_max_age

    def collect(self) -> Iterator[Metric]:
        store = self._store()
        if store is None:
            return
        try:
            counts = store.counts()
            counters = store.counters()
            workers = len(store.live_workers(self._worker_max_age))
        except Exception:  # a scrape must not fail because the store is busy; the next one will tell
            _logger.warning("metrics: job store unavailable", exc_info=True)
            return
        jobs = GaugeMetricFamily("backbone_rank_jobs", "Jobs by kind and state.", labels=["kind", "state"])
        for (kind, state), n in sorted(counts.items()):
            jobs.add_metric([kind, state], n)
        yield jobs
        yield GaugeMetricFamily("backbone_rank_workers_alive", "Workers with a fresh heartbeat.", value=workers)
        for name, doc in _STORE_COUNTERS.items():
            yield CounterMetricFamily(f"backbone_rank_{name}", doc, value=counters.get(name, 0.0))


class Metrics:
    """The registry and instruments of one app."""

    def __init__(self, store: Callable[[], JobStore | None], *, worker_max_age: float) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "backbone_rank_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "backbone_rank_http_request_duration_seconds",
            "HTTP request latency by route template and method (SSE streams: their whole duration).",
            ["route", "method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(store, worker_max_age))


class MetricsMiddleware:
    """Pure ASGI (streams pass through untouched): counts and times every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = {"code": 500}

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "")
            self.metrics.requests.labels(template, method, str(status["code"])).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - began)
