"""``/v1/rankings``: submit a ranking job, read it, follow it (SSE), cancel it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from service.contract import RankingRequest
from service.deps import ApiKeyIdDep, SettingsDep, StoreDep, api_key_scheme
from service.jobs.rows import Job
from service.schemas import JobCreated, JobSummary, JobView, RankingJob, RankingJobSummary
from service.streams import JobStreams
from service.validate import ranking_request

from . import _jobs

router = APIRouter(prefix="/v1/rankings", tags=["rankings"], dependencies=[Depends(api_key_scheme)])

_ERRORS = _jobs.error_responses(401, 403, 404, 409, 413, 422, 429)
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Same key + same body: the same job (200); same key + another body: 422.",
    ),
]


@router.post("", status_code=202, response_model=JobCreated, responses=_ERRORS)
def create_ranking(
    body: RankingRequest,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    api_key_id: ApiKeyIdDep,
    idempotency_key: IdempotencyKey = None,
) -> JobCreated:
    """Queue a ranking; follow it at ``Location`` (GET) or ``Location/events`` (SSE)."""
    request = ranking_request(body, settings)
    return _jobs.submit(store, settings, "ranking", request, idempotency_key, api_key_id, response)


@router.get("", response_model=list[RankingJobSummary], responses=_ERRORS)
async def list_rankings(store: StoreDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[JobSummary]:
    """The newest rankings first, each with a summary of its result (the winner and its predicted accuracy); the
    whole request and result: GET the job."""
    return await _jobs.list_jobs(store, "ranking", limit)


@router.get("/{job_id}", response_model=RankingJob, responses=_ERRORS)
async def get_ranking(job_id: str, store: StoreDep) -> JobView:
    """State, progress and, once succeeded, the ranked result (schema: RankingResult)."""
    return await _jobs.read_job(store, "ranking", job_id)


@router.get("/{job_id}/events", response_class=EventSourceResponse, responses=_ERRORS)
async def ranking_events(
    stream: Annotated[tuple[Job, JobStreams], Depends(_jobs.event_stream("ranking"))], settings: SettingsDep
) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events: ``state``, ``progress`` (stage, backbone, done/total), then ``end``; or ``reconnect`` when
    the stream reached ``event_stream_max_seconds`` (open it again). 429 ``too_many_streams`` beyond
    ``max_event_streams`` open streams (``max_event_streams_per_key`` per API key)."""
    async for event in _jobs.job_events(*stream, settings.event_stream_max_seconds):
        yield event


@router.delete("/{job_id}", response_model=RankingJob, responses=_ERRORS)
def cancel_ranking(job_id: str, store: StoreDep, response: Response) -> JobView:
    """Cancel: 200 when it was still queued (cancelled now), 202 when running (its worker stops at its next
    progress event), 409 ``job_finished`` when it already ended."""
    return _jobs.cancel(store, "ranking", job_id, response)
