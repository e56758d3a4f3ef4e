"""Event streams of jobs in the web process: one poller per watched job, fanned out to its streams, and their caps.

Separate from the routers (service/routers/_jobs.py turns rows into events) because it is shared state of the app
with a lifetime of its own (created and closed by the lifespan in service/main.py). A stream (``GET
/v1/{rankings,finetunes}/{id}/events``) no longer reads the job store itself: a job being watched has one poller
task, which reads its row every ``poll_seconds`` and hands each subscribed stream the row when it changed for that
stream (through a queue of one: a slow stream skips to the newest row, as its own poll would have). So 500 streams
on one job cost one read per poll, not 500.

The number of open streams is capped, in all and per API key (:meth:`JobStreams.acquire`; beyond,
``429 too_many_streams``); how long one stream lasts is bounded by the router (``event_stream_max_seconds``).
Everything here runs on the event loop, so nothing needs a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio

from service.errors import TooManyStreams
from service.jobs.rows import Job
from service.jobs.store import JobStore

__all__ = ["POLL_SECONDS", "JobStreams", "Subscription"]

_logger = logging.getLogger(__name__)

#: How often the poller of a job followed by event streams reads its row.
POLL_SECONDS = 0.2
_UNSEEN = ("", -1, -1, False)


class Subscription:
    """One stream's view of a job's poller: :meth:`next` is the job's row once it changed (None: the job is gone)."""

    def __init__(self, since: float) -> None:
        #: When the stream subscribed (loop time): a read that began earlier may predate what it already showed.
        self.since = since
        self._seen: tuple[str, int, int, bool] | None = _UNSEEN
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=1)

    def offer(self, job: Job | None, read_at: float) -> None:
        if read_at < self.since:
            return
        seen = None if job is None else (job.state, job.progress_seq, job.attempts, job.cancel_requested)
        if seen == self._seen:
            return
        self._seen = seen
        if self._queue.full():  # the stream has not taken the previous row yet: the newer one replaces it
            self._queue.get_nowait()
        self._queue.put_nowait(job)

    async def next(self, timeout: float) -> Job | None:
        """The job's next changed row; raises ``TimeoutError`` after ``timeout`` seconds without one."""
        async with asyncio.timeout(timeout):
            return await self._queue.get()


@dataclass
class _Feed:
    subscribers: set[Subscription] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class JobStreams:
    """The pollers of the watched jobs and the count of open streams.

    Parameters
    ----------
    store : JobStore
    poll_seconds : float
        How often a watched job's row is read (default :data:`POLL_SECONDS`).
    max_streams : int
        Open streams in all.
    max_streams_per_key : int, optional
        Open streams of one API key (None: no per-key cap; streams without a key count only in all).
    """

    def __init__(
        self,
        store: JobStore,
        *,
        max_streams: int,
        max_streams_per_key: int | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.max_streams = max_streams
        self.max_streams_per_key = max_streams_per_key
        self.open = 0
        self._per_key: Counter[str] = Counter()
        self._feeds: dict[str, _Feed] = {}
        #: Store reads running in threads; a cancelled poller does not wait for its read, :meth:`close` does.
        self._reads: set[asyncio.Future[Job | None]] = set()

    @property
    def pollers(self) -> int:
        """Jobs being polled now (one task each, however many streams follow them)."""
        return sum(1 for feed in self._feeds.values() if feed.task is not None and not feed.task.done())

    # ------------------------------------------------------------------------------------------ caps

    def acquire(self, key: str | None) -> None:
        """Count one more open stream for ``key`` (an API key's digest, or None).

        Raises
        ------
        TooManyStreams
            ``max_streams`` are open, or ``max_streams_per_key`` of ``key``.
        """
        if key is not None and self.max_streams_per_key is not None and self._per_key[key] >= self.max_streams_per_key:
            raise TooManyStreams(
                f"this API key has {self._per_key[key]} event streams open (the limit per key is "
                f"{self.max_streams_per_key}); close one, or follow the job with GET, then retry",
                open=self._per_key[key],
                limit=self.max_streams_per_key,
            )
        if self.open >= self.max_streams:
            raise TooManyStreams(
                f"the service has {self.open} event streams open (the limit is {self.max_streams}); follow the job "
                "with GET, or retry later",
                open=self.open,
                limit=self.max_streams,
            )
        self.open += 1
        if key is not None:
            self._per_key[key] += 1

    def release(self, key: str | None) -> None:
        """One stream of ``key`` closed."""
        self.open -= 1
        if key is not None:
            self._per_key[key] -= 1
            if self._per_key[key] <= 0:
                del self._per_key[key]

    # --------------------------------------------------------------------------------------- polling

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[Subscription]:
        """Follow ``job_id`` for the ``async with`` block; the first reader of a job starts its poller, the last one
        to leave stops it."""
        subscription = Subscription(asyncio.get_running_loop().time())
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = _Feed()
            feed.task = asyncio.create_task(self._poll(job_id, feed), name=f"job-poller-{job_id[:8]}")
        feed.subscribers.add(subscription)
        try:
            yield subscription
        finally:
            feed.subscribers.discard(subscription)
            if not feed.subscribers:
                self._drop(job_id, feed)

    def _drop(self, job_id: str, feed: _Feed) -> None:
        if self._feeds.get(job_id) is feed:
            del self._feeds[job_id]
        if feed.task is not None and feed.task is not asyncio.current_task():
            feed.task.cancel()

    async def _poll(self, job_id: str, feed: _Feed) -> None:
        loop = asyncio.get_running_loop()
        try:
            while feed.subscribers:
                await asyncio.sleep(self.poll_seconds)
                read_at = loop.time()
                read = asyncio.ensure_future(anyio.to_thread.run_sync(self.store.get, job_id))
                self._reads.add(read)
                read.add_done_callback(self._reads.discard)
                try:
                    job = await asyncio.shield(read)
                except Exception:  # a busy store now: the next poll tries again
                    _logger.warning("job %s: poll for its event streams failed", job_id, exc_info=True)
                    continue
                for subscription in list(feed.subscribers):
                    subscription.offer(job, read_at)
                if job is None or job.terminal:
                    return  # every stream has its last row; a later stream of this job starts a new poller
        finally:
            self._drop(job_id, feed)

    async def close(self) -> None:
        """Stop every poller (the app is shutting down) and wait for the store reads they had in flight: the store
        is closed next, and closing its connections under a read crashes the process."""
        tasks = [feed.task for feed in self._feeds.values() if feed.task is not None]
        self._feeds.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._reads:
            await asyncio.gather(*self._reads, return_exceptions=True)
