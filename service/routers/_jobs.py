"""What the ranking and fine-tune routers share: reading a job, its JSON view, its SSE stream, cancelling."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi import Request, Response
from fastapi.sse import ServerSentEvent
from pydantic import ValidationError

from service.config import Settings
from service.deps import StoreDep
from service.errors import JobCorrupt, JobNotFound
from service.jobs.store import Job, JobStore
from service.schemas import ErrorBody, FinetuneJob, JobCreated, JobView, RankingJob, timestamp

_logger = logging.getLogger(__name__)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=``: every listed status answers an :class:`ErrorBody`."""
    return {status: {"model": ErrorBody} for status in statuses}


#: How often an SSE stream looks at the job row.
POLL_SECONDS = 0.2

_PREFIX = {"ranking": "/v1/rankings", "finetune": "/v1/finetunes"}
#: Each kind's typed view: its request and result models (and so its OpenAPI schema).
_VIEWS: dict[str, type[JobView]] = {"ranking": RankingJob, "finetune": FinetuneJob}


def job_links(job: Job) -> dict[str, str]:
    base = f"{_PREFIX[job.kind]}/{job.id}"
    links = {"self": base, "events": f"{base}/events"}
    if job.state == "succeeded":
        links["report"] = f"/reports/{_PREFIX[job.kind].rsplit('/', 1)[1]}/{job.id}"
        if job.kind == "finetune":
            links["weights"] = f"{base}/weights"
    return links


def get_job(store: JobStore, kind: str, job_id: str) -> Job:
    """The job, or 404 ``job_not_found`` (also for an id of the other kind)."""
    job = store.get(job_id)
    if job is None or job.kind != kind:
        raise JobNotFound(f"no {kind} job with id {job_id!r}", job_id=job_id)
    return job


def job_dependency(kind: str) -> Callable[[str, JobStore], Job]:
    """A dependency that resolves ``{job_id}`` to the job, so a 404 is answered before a stream starts."""

    def dependency(job_id: str, store: StoreDep) -> Job:
        return get_job(store, kind, job_id)

    return dependency


def job_view(job: Job) -> JobView:
    """The job as its kind's typed view (the stored request and result validated into their models).

    A job whose stored row cannot be read, or whose request or result no longer fits its model, is shown alone as
    ``error.code == "corrupt"`` with ``request``/``progress``/``result`` null, never an error of the whole list.
    """
    view = _VIEWS.get(job.kind, JobView)
    fields: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "request": None if "request" in job.unreadable else job.request,
        "progress": job.progress,
        "result": job.result,
        "error": job.error,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "created_at": timestamp(job.created_at),
        "started_at": timestamp(job.started_at),
        "finished_at": timestamp(job.finished_at),
        "links": job_links(job),
    }
    try:
        return view(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        _logger.warning("job %s: its stored row does not fit %s (%s)", job.id, view.__name__, where)
        error = {
            "code": JobCorrupt.code,
            "detail": f"the stored job does not fit its model ({where}: {first['msg']}); this job cannot run or be "
            "reported: submit it again",
        }
        return view(**{**fields, "request": None, "progress": None, "result": None, "error": error})


def submit(
    store: JobStore,
    settings: Settings,
    kind: str,
    request: dict[str, Any],
    idempotency_key: str | None,
    api_key_id: str | None,
    response: Response,
) -> JobCreated:
    """Queue the validated ``request`` within the queue limit and, with API keys on, the caller's key's quota."""
    job, is_new = store.submit(
        kind,
        request,
        idempotency_key=idempotency_key,
        max_queued=settings.max_queued_jobs,
        owner=api_key_id,
        max_active_per_owner=settings.max_active_jobs_per_key,
    )
    return created(job, is_new, response)


def created(job: Job, is_new: bool, response: Response) -> JobCreated:
    """202 for a new job, 200 for an idempotent replay; ``Location`` either way."""
    links = job_links(job)
    response.status_code = 202 if is_new else 200
    response.headers["Location"] = links["self"]
    if not is_new:
        response.headers["Idempotent-Replayed"] = "true"
    return JobCreated(id=job.id, kind=job.kind, state=job.state, url=links["self"], events_url=links["events"])


def cancel(store: JobStore, kind: str, job_id: str, response: Response) -> JobView:
    """200 when the job is cancelled now (it was queued), 202 when its worker was asked to stop."""
    get_job(store, kind, job_id)
    job = store.request_cancel(job_id)
    response.status_code = 200 if job.state == "cancelled" else 202
    return job_view(job)


def _end_data(job: Job) -> dict[str, Any]:
    return {"id": job.id, "state": job.state, "error": job.error, "links": job_links(job)}


async def job_events(store: JobStore, job: Job, request: Request) -> AsyncIterator[ServerSentEvent]:
    """``state`` on every state change, ``progress`` on every new progress row, then ``end`` with the
    terminal state (and error); stops early when the client goes away."""
    last_state: str | None = None
    last_seq = -1
    while True:
        if job.state != last_state:
            last_state = job.state
            yield ServerSentEvent(event="state", data={"id": job.id, "state": job.state, "attempts": job.attempts})
        if job.progress is not None and job.progress_seq != last_seq:
            last_seq = job.progress_seq
            yield ServerSentEvent(event="progress", data=job.progress, id=str(job.progress_seq))
        if job.terminal:
            yield ServerSentEvent(event="end", data=_end_data(job))
            return
        await anyio.sleep(POLL_SECONDS)
        if await request.is_disconnected():
            return
        latest = await anyio.to_thread.run_sync(store.get, job.id)
        if latest is None:  # cannot happen (jobs are never deleted); end the stream rather than spin
            return
        job = latest
