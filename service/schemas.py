"""Response models of the HTTP API (v1): job views and errors. The request bodies and the results are the
contract's models (:mod:`service.contract`), the same ones the CLI, the client and the worker use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from service.contract import (
    MAX_BACKBONES,
    MAX_BOOTSTRAP,
    DatasetSpec,
    FinetuneRequest,
    FinetuneResult,
    RankingRequest,
    RankingResult,
)

__all__ = [
    "MAX_BACKBONES",
    "MAX_BOOTSTRAP",
    "DatasetSpec",
    "RankingRequest",
    "FinetuneRequest",
    "JobCreated",
    "JobView",
    "RankingJob",
    "FinetuneJob",
    "ErrorBody",
    "FieldError",
    "timestamp",
]


class FieldError(BaseModel):
    """One problem of an ``invalid_request`` body or parameter: where (``["body", "backbones", 0]``), what, and
    pydantic's error type (``json_invalid`` for a body that cannot be parsed)."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error response (4xx and 5xx): a stable machine ``code`` and a ``detail`` that says how to fix it
    (some errors add context fields, e.g. ``suggestions``; ``invalid_request`` lists its ``errors``)."""

    model_config = ConfigDict(extra="allow")

    code: str
    detail: str
    errors: list[FieldError] | None = None


class JobCreated(BaseModel):
    """Answer to a submission (202, or 200 for an idempotent replay)."""

    id: str
    kind: str
    state: str
    url: str
    events_url: str


class JobView(BaseModel):
    """A job: its state, progress while it runs, and its result (``succeeded``) or error (``failed``). A job whose
    stored row cannot be read has ``error.code == "corrupt"`` and a null ``request``, ``progress`` and ``result``."""

    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    request: dict[str, Any] | None
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str]


class RankingJob(JobView):
    """A ranking job: its (validated, stored) request and, once succeeded, its :class:`RankingResult`."""

    request: RankingRequest | None  # type: ignore[assignment]  # narrows the generic view's mapping to the typed model
    result: RankingResult | None  # type: ignore[assignment]  # likewise for the result


class FinetuneJob(JobView):
    """A fine-tune job: its request (``ranking_id`` resolved to the winner) and, once succeeded, its result."""

    request: FinetuneRequest | None  # type: ignore[assignment]  # as RankingJob
    result: FinetuneResult | None  # type: ignore[assignment]  # as RankingJob


def timestamp(value: float | None) -> datetime | None:
    """Unix seconds (the store's clock) as an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, UTC)
