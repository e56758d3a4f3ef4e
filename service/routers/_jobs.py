"""What the ranking and fine-tune routers share: reading a job, its JSON view and list summary, its SSE stream,
cancelling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request, Response
from fastapi.sse import ServerSentEvent
from pydantic import BaseModel, ValidationError

from service.config import Settings
from service.deps import ApiKeyIdDep, StoreDep
from service.errors import JobCorrupt, JobNotFound
from service.jobs.rows import Job
from service.jobs.store import REQUEST_PATH_PREFIX, JobStore
from service.schemas import (
    ErrorBody,
    FinetuneJob,
    FinetuneJobSummary,
    FinetuneSummary,
    JobCreated,
    JobSummary,
    JobView,
    RankingJob,
    RankingJobSummary,
    RankingSummary,
    timestamp,
)
from service.streams import JobStreams, Subscription

_logger = logging.getLogger(__name__)
_V = TypeVar("_V", bound=BaseModel)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=``: every listed status answers an :class:`ErrorBody`."""
    return {status: {"model": ErrorBody} for status in statuses}


_PREFIX = {"ranking": "/v1/rankings", "finetune": "/v1/finetunes"}
#: Each kind's typed view: its request and result models (and so its OpenAPI schema).
_VIEWS: dict[str, type[JobView]] = {"ranking": RankingJob, "finetune": FinetuneJob}
#: Each kind's list item, and the parts of its result the summary is made of.
_SUMMARIES: dict[str, tuple[type[JobSummary], dict[str, str]]] = {
    "ranking": (RankingJobSummary, RankingSummary.PATHS),
    "finetune": (FinetuneJobSummary, FinetuneSummary.PATHS),
}


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


def _fields(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "progress": job.progress,
        "error": job.error,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "created_at": timestamp(job.created_at),
        "started_at": timestamp(job.started_at),
        "finished_at": timestamp(job.finished_at),
        "links": job_links(job),
    }


def _validated(view: type[_V], job: Job, fields: dict[str, Any], unread: tuple[str, ...]) -> _V:
    """``view(**fields)``; a stored row that does not fit it is shown alone as ``error.code == "corrupt"`` with the
    ``unread`` fields (and ``progress``) null, never an error of the whole list."""
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
        return view(**{**fields, "progress": None, **dict.fromkeys(unread), "error": error})


def job_view(job: Job) -> JobView:
    """The job as its kind's typed view (the stored request and result validated into their models).

    A job whose stored row cannot be read, or whose request or result no longer fits its model, is shown alone as
    ``error.code == "corrupt"`` with ``request``/``progress``/``result`` null, never an error of the whole list.
    """
    fields = {
        **_fields(job),
        "request": None if "request" in job.unreadable else job.request,
        "result": job.result,
    }
    return _validated(_VIEWS.get(job.kind, JobView), job, fields, ("request", "result"))


async def read_job(store: JobStore, kind: str, job_id: str) -> JobView:
    """GET of one job: the store read in a worker thread, the view built on the event loop (one thread hop per
    request, where a plain ``def`` endpoint takes two: FastAPI serialises its answer in the thread pool too)."""
    return job_view(await anyio.to_thread.run_sync(get_job, store, kind, job_id))


async def list_jobs(store: JobStore, kind: str, limit: int) -> list[JobSummary]:
    """The newest ``limit`` jobs of ``kind`` as list items: no request or result, a summary of a succeeded one's
    result (only its parts are read from the store: service/schemas.py ``PATHS``); threads as :func:`read_job`."""
    view, paths = _SUMMARIES[kind]
    jobs = await anyio.to_thread.run_sync(lambda: store.list_jobs(kind, limit=limit, result_paths=paths))
    return [job_summary(view, job) for job in jobs]


def job_summary(view: type[JobSummary], job: Job) -> JobSummary:
    """One list item (a job read with ``result_parts``); corrupt alone, as :func:`job_view`."""
    parts = dict(job.result_parts or {})
    for name, path in _SUMMARIES[job.kind][1].items():
        from_request = path.startswith(REQUEST_PATH_PREFIX)
        # the result's parts once succeeded; the request's always; neither from a column that cannot be read
        column = "request" if from_request else "result"
        if column in job.unreadable or not (from_request or job.state == "succeeded"):
            parts[name] = None
    summary = parts if job.result_parts is not None else None
    return _validated(view, job, {**_fields(job), "summary": summary}, ("summary",))


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


def streams_of(request: Request) -> JobStreams:
    return request.app.state.streams


def event_stream(kind: str) -> Callable[..., AsyncIterator[tuple[Job, JobStreams]]]:
    """A dependency that resolves ``{job_id}`` to the job (404 first) and holds one of the open-stream slots for as long
    as the stream lasts (429 ``too_many_streams`` beyond the caps, before the stream starts)."""

    async def dependency(
        job_id: str, request: Request, store: StoreDep, key: ApiKeyIdDep
    ) -> AsyncIterator[tuple[Job, JobStreams]]:
        job = await anyio.to_thread.run_sync(get_job, store, kind, job_id)
        streams = streams_of(request)
        streams.acquire(key)
        try:
            yield job, streams
        finally:
            streams.release(key)

    return dependency


async def job_events(job: Job, streams: JobStreams, max_seconds: float) -> AsyncIterator[ServerSentEvent]:
    """``state`` on every state change, ``progress`` on every new progress row, then ``end`` with the terminal state
    (and error); or, after ``max_seconds``, ``reconnect`` (open the stream again: nothing is missed, the next stream
    starts with the job's state and latest progress). The job's rows come from its poller (service/streams.py)."""
    deadline = asyncio.get_running_loop().time() + max_seconds
    last_state: str | None = None
    last_seq = -1
    async with contextlib.AsyncExitStack() as stack:
        updates: Subscription | None = None  # subscribed once there is something to wait for
        while True:
            if job.state != last_state:
                last_state = job.state
                yield ServerSentEvent(event="state", data={"id": job.id, "state": job.state, "attempts": job.attempts})
            if job.progress is not None and job.progress_seq > last_seq:
                last_seq = job.progress_seq
                yield ServerSentEvent(event="progress", data=job.progress, id=str(job.progress_seq))
            if job.terminal:
                yield ServerSentEvent(event="end", data=_end_data(job))
                return
            if updates is None:
                updates = await stack.enter_async_context(streams.subscribe(job.id))
            try:
                latest = await updates.next(deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                data = {"id": job.id, "state": job.state, "after_seconds": max_seconds, "url": job_links(job)["events"]}
                yield ServerSentEvent(event="reconnect", data=data, retry=1000)
                return
            if latest is None:  # cannot happen (jobs are never deleted); end the stream rather than spin
                return
            job = latest
