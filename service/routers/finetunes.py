"""``/v1/finetunes``: fine-tune a backbone (or a ranking's winner), follow it, download its weights."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from service.contract import FinetuneRequest
from service.deps import ApiKeyIdDep, SettingsDep, StoreDep, api_key_scheme
from service.errors import ArtifactNotFound, JobNotSucceeded
from service.jobs.rows import Job
from service.schemas import FinetuneJob, FinetuneJobSummary, JobCreated, JobSummary, JobView
from service.streams import JobStreams
from service.validate import finetune_request

from . import _jobs
from .rankings import IdempotencyKey

router = APIRouter(prefix="/v1/finetunes", tags=["finetunes"], dependencies=[Depends(api_key_scheme)])

_ERRORS = _jobs.error_responses(401, 403, 404, 409, 413, 422, 429)


@router.post("", status_code=202, response_model=JobCreated, responses=_ERRORS)
def create_finetune(
    body: FinetuneRequest,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    api_key_id: ApiKeyIdDep,
    idempotency_key: IdempotencyKey = None,
) -> JobCreated:
    """Queue a fine-tuning of ``backbone``, or of the winner of the succeeded ranking ``ranking_id``."""
    request = finetune_request(body, settings, store)
    return _jobs.submit(store, settings, "finetune", request, idempotency_key, api_key_id, response)


@router.get("", response_model=list[FinetuneJobSummary], responses=_ERRORS)
async def list_finetunes(store: StoreDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[JobSummary]:
    """The newest fine-tunes first, each with a summary of its result (backbone, strategy, test accuracy)."""
    return await _jobs.list_jobs(store, "finetune", limit)


@router.get("/{job_id}", response_model=FinetuneJob, responses=_ERRORS)
async def get_finetune(job_id: str, store: StoreDep) -> JobView:
    return await _jobs.read_job(store, "finetune", job_id)


@router.get("/{job_id}/events", response_class=EventSourceResponse, responses=_ERRORS)
async def finetune_events(
    stream: Annotated[tuple[Job, JobStreams], Depends(_jobs.event_stream("finetune"))], settings: SettingsDep
) -> AsyncIterator[ServerSentEvent]:
    """As the ranking's events (``state``, ``progress``, ``end`` or ``reconnect``; 429 ``too_many_streams``)."""
    async for event in _jobs.job_events(*stream, settings.event_stream_max_seconds):
        yield event


@router.delete("/{job_id}", response_model=FinetuneJob, responses=_ERRORS)
def cancel_finetune(job_id: str, store: StoreDep, response: Response) -> JobView:
    return _jobs.cancel(store, "finetune", job_id, response)


@router.get(
    "/{job_id}/weights",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "model.safetensors"}, **_ERRORS},
)
def finetune_weights(job_id: str, store: StoreDep, settings: SettingsDep) -> FileResponse:
    """The fine-tuned model as safetensors (its timm config is in the job's result); 409 until it succeeded."""
    job = _jobs.get_job(store, "finetune", job_id)
    if job.state != "succeeded":
        raise JobNotSucceeded(f"fine-tune {job_id} is {job.state}; weights exist once it succeeded", state=job.state)
    # Server-generated location (never a path from the result or the request).
    path = Path(settings.finetunes_dir or settings.cache_dir / "finetunes") / job.id / "model.safetensors"
    if not path.is_file():
        raise ArtifactNotFound(f"the weights of fine-tune {job_id} are no longer on the server", job_id=job_id)
    return FileResponse(path, media_type="application/octet-stream", filename=f"finetune-{job.id}.safetensors")
