"""The durable job store: one SQLite row per job, leases with heartbeats, atomic state changes.

A job moves ``queued -> running -> succeeded | failed | cancelled`` (a queued job can also be
cancelled directly). Research/reliability.md §3.4 is the design:

* WAL with ``synchronous=FULL``: a ``202 Accepted`` survives a crash of the process *and* of the host.
* Every state change is one ``BEGIN IMMEDIATE`` transaction, so two workers never claim one job.
* A claim sets ``worker_id``, a lease (``lease_expires``) and ``attempts += 1``. The worker extends
  the lease with heartbeats; every write of a worker is fenced by ``worker_id`` and ``state='running'``,
  so a worker that lost its lease can no longer touch the job.
* A running job whose lease expired goes back to ``queued`` (or to ``cancelled`` when a cancel was
  asked for), and after ``max_attempts`` claims to ``failed`` with code ``worker_lost``. Leases are
  expired by every claim and by the web process's reaper, so no job stays ``running`` forever, with or
  without a live worker.
* A claim records the claiming process (:mod:`service.jobs.liveness`); a job whose worker process is provably dead
  (same host, pid gone or reused) is taken back the same way without waiting for its lease, by every claim and by
  the reaper's sweep (:meth:`JobStore.reclaim_dead`) once a second.
* The result (or error) is written in the same transaction as the terminal state, together with
  the counters behind ``/metrics``.
* ``idempotency_key`` is UNIQUE: the database, not a check-then-insert, keeps one job per key.
* ``owner`` names the API key that submitted a job (a digest, never the key), for the per-key quota.
* The store fails closed (:mod:`service.jobs.schema`): a file that exists but cannot serve as the store
  stops start-up with ``StoreCorrupt``; only an absent file becomes a fresh store.
* A row whose JSON cannot be read fails alone: it loads with ``error.code == "corrupt"`` (and the unreadable
  columns named in :attr:`Job.unreadable`), so its neighbours list, read and cancel as usual.
* A listing can ask for parts of each result instead of the whole (``list_jobs(result_paths=...)``): SQLite extracts
  them, so a list of 50 finished rankings neither reads nor parses 50 full results.

Connections are per thread (the web process serves requests from a thread pool).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from service.errors import IdempotencyKeyReused, JobFinished, JobNotFound, QueueFull, QuotaExceeded
from service.jobs.liveness import ProcessIdentity, host_identity, provably_dead
from service.jobs.rows import JOB_KINDS, JOB_STATES, LISTED_COLUMNS, TERMINAL_STATES, Job, is_object
from service.jobs.schema import check_store_file, create_store_file, migrate

__all__ = [
    "JobStore",
    "REQUEST_PATH_PREFIX",
    "request_hash",
    "json_safe",
]

#: A ``result_paths`` path with this prefix reads the stored request instead of the result (:meth:`JobStore.list_jobs`).
REQUEST_PATH_PREFIX = "request:"

_logger = logging.getLogger(__name__)

JobKind = Literal["ranking", "finetune"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
HeartbeatStatus = Literal["ok", "cancel", "lost"]

#: What a job's row loses when its worker gives it up or is lost.
_UNCLAIMED = "worker_id = NULL, lease_expires = NULL, worker_host = NULL, worker_pid = NULL, worker_started = NULL"
#: What taking a lost job back reads of it.
_LOST_COLUMNS = "id, attempts, max_attempts, cancel_requested, worker_id, worker_host, worker_pid, worker_started"
def _dead(row: sqlite3.Row) -> bool:
    pid, started = row["worker_pid"], row["worker_started"]
    if pid is None or started is None:
        return False
    return provably_dead(ProcessIdentity(row["worker_host"], pid, started))


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` and numpy scalars/arrays as Python values, so that
    the stored JSON is strict (browsers and most clients reject ``NaN``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return json_safe(value.tolist())
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(json_safe(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def request_hash(kind: str, request: Mapping[str, Any]) -> str:
    """sha256 of the kind and the canonical JSON of the request: equal requests, equal hashes."""
    return hashlib.sha256(f"{kind}\n{_dumps(request)}".encode()).hexdigest()


class JobStore:
    """The job table of one SQLite file.

    Parameters
    ----------
    path : path-like
        The database file (its folder is created).
    lease_seconds : float
        How long a claim or heartbeat keeps a job for its worker.
    max_attempts : int
        Claims of a job before an expired lease fails it with ``worker_lost``.
    """

    def __init__(self, path: str | os.PathLike[str], *, lease_seconds: float = 60.0, max_attempts: int = 3) -> None:
        if lease_seconds <= 0 or max_attempts < 1:
            raise ValueError("lease_seconds must be > 0 and max_attempts >= 1")
        self.path = Path(path)
        self.lease_seconds = float(lease_seconds)
        self.max_attempts = int(max_attempts)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------ connection

    def initialize(self) -> JobStore:
        """Create the store if its file is absent, else check it and migrate an older schema; returns ``self``.

        Raises
        ------
        StoreCorrupt
            The file exists but cannot serve as the job store: never silently start over with an empty one.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(self.path):
            create_store_file(self.path)
        check_store_file(self._conn, self.path)
        self._conn().execute("PRAGMA journal_mode=WAL")
        with self._write() as conn:  # one transaction: a second process migrating at once waits, then no-ops
            migrate(conn)
        return self

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Autocommit mode: transactions are explicit BEGIN IMMEDIATE ... COMMIT blocks.
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``BEGIN IMMEDIATE`` takes the write lock up front (no upgrade deadlocks)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection this store opened (in any thread)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    # --------------------------------------------------------------------------------------- clients

    def submit(
        self,
        kind: str,
        request: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        max_queued: int | None = None,
        owner: str | None = None,
        max_active_per_owner: int | None = None,
    ) -> tuple[Job, bool]:
        """Enqueue a job for ``owner`` (an API key's digest, or None); returns ``(job, created)``.

        With an ``idempotency_key`` already used for the same kind and request, the existing job comes
        back with ``created=False`` (never refused by the limits below: it already exists).

        Raises
        ------
        IdempotencyKeyReused
            The key belongs to a different request.
        QuotaExceeded
            ``owner`` already has ``max_active_per_owner`` jobs queued or running.
        QueueFull
            ``max_queued`` jobs are already waiting.
        """
        if kind not in JOB_KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        digest = request_hash(kind, request)
        now = time.time()
        try:
            with self._write() as conn:
                if idempotency_key is not None:
                    existing = self._get_by_key(conn, idempotency_key)
                    if existing is not None:
                        return self._replay(existing, digest), False
                if owner is not None and max_active_per_owner is not None:
                    (active,) = conn.execute(
                        "SELECT count(*) FROM jobs WHERE owner = ? AND state IN ('queued', 'running')", (owner,)
                    ).fetchone()
                    if active >= max_active_per_owner:
                        raise QuotaExceeded(
                            f"this API key has {active} jobs queued or running (the limit per key is "
                            f"{max_active_per_owner}); wait for one to finish, or cancel one",
                            active=active,
                            limit=max_active_per_owner,
                        )
                if max_queued is not None:
                    (queued,) = conn.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()
                    if queued >= max_queued:
                        raise QueueFull(
                            f"{queued} jobs are queued (the limit is {max_queued}); retry later",
                            queued=queued,
                        )
                job_id = uuid.uuid4().hex
                conn.execute(
                    "INSERT INTO jobs (id, kind, state, request, request_hash, idempotency_key, created_at, "
                    "max_attempts, owner) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                    (job_id, kind, _dumps(request), digest, idempotency_key, now, self.max_attempts, owner),
                )
        except sqlite3.IntegrityError:
            # Only the UNIQUE key can fail; BEGIN IMMEDIATE serialises writers, so this is a belt-and-braces
            # path for a key inserted between our read and write by a non-conforming writer.
            existing = self._get_by_key(self._conn(), idempotency_key or "")
            if existing is None:
                raise
            return self._replay(existing, digest), False
        job = self.get(job_id)
        assert job is not None
        return job, True

    @staticmethod
    def _get_by_key(conn: sqlite3.Connection, key: str) -> Job | None:
        row = conn.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        return None if row is None else Job.from_row(row)

    @staticmethod
    def _replay(existing: Job, digest: str) -> Job:
        if existing.request_hash != digest:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used with a different request; use a new key for a new request",
                job_id=existing.id,
            )
        return existing

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

    def list_jobs(
        self,
        kind: str | None = None,
        *,
        state: str | None = None,
        limit: int = 50,
        result_paths: Mapping[str, str] | None = None,
    ) -> list[Job]:
        """Newest first.

        With ``result_paths`` (name -> SQLite JSON path into the result, e.g. ``{"winner": "$.backbones[0].id"}``,
        or into the request with a ``request:`` prefix) each job comes without its request and result:
        :attr:`Job.result_parts` holds those parts (None where absent), extracted by SQLite. A request or result
        that is not a JSON object still marks its job ``corrupt``, checked in SQL without reading it into Python.
        """
        clauses, args = [], []
        if kind is not None:
            clauses.append("kind = ?")
            args.append(kind)
        if state is not None:
            clauses.append("state = ?")
            args.append(state)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        columns, paths = "*", tuple(result_paths.values()) if result_paths is not None else ()
        sources = ["request" if p.startswith(REQUEST_PATH_PREFIX) else "result" for p in paths]
        paths = tuple(p.removeprefix(REQUEST_PATH_PREFIX) for p in paths)
        if result_paths is not None:
            # CASE evaluates lazily: json_type and -> never see text that json_valid refused (they would raise).
            parts = "".join(
                f", CASE WHEN json_valid({col}) THEN CASE json_type({col}) WHEN 'object' THEN {col} -> ? END END "
                f"AS part_{i}"
                for i, col in enumerate(sources)
            )
            columns = (
                f"{LISTED_COLUMNS}, {is_object('request')} AS request_ok, "
                f"result IS NULL OR {is_object('result')} AS result_ok{parts}"
            )
        rows = self._conn().execute(
            f"SELECT {columns} FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*paths, *args, int(limit)),
        )
        return [Job.from_row(row, tuple(result_paths or ())) for row in rows]

    def request_cancel(self, job_id: str) -> Job:
        """Cancel: a queued job is cancelled at once, a running one is asked to stop (its worker sees the
        flag at its next heartbeat or progress event).

        Raises
        ------
        JobNotFound, JobFinished
        """
        now = time.time()
        with self._write() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job with id {job_id!r}", job_id=job_id)
            state = row["state"]
            if state in TERMINAL_STATES:
                raise JobFinished(f"job {job_id} already finished ({state}); nothing to cancel", state=state)
            if state == "queued":
                conn.execute(
                    "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ? WHERE id = ?",
                    (now, job_id),
                )
            else:
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        job = self.get(job_id)
        assert job is not None
        return job

    def counts(self) -> dict[tuple[str, str], int]:
        """``(kind, state) -> number of jobs`` (zeros included)."""
        counts = {(kind, state): 0 for kind in JOB_KINDS for state in JOB_STATES}
        for row in self._conn().execute("SELECT kind, state, count(*) AS n FROM jobs GROUP BY kind, state"):
            counts[(row["kind"], row["state"])] = row["n"]
        return counts

    def counters(self) -> dict[str, float]:
        """The monotonic counters workers add to when they finish jobs (``/metrics``)."""
        return {row["name"]: row["value"] for row in self._conn().execute("SELECT name, value FROM counters")}

    def check_writable(self) -> None:
        """A real write (raises ``sqlite3.Error`` when the store cannot take one), for ``/readyz``."""
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('ready_check', ?)", (str(time.time()),))

    # --------------------------------------------------------------------------------------- workers

    def claim(self, worker_id: str, process: ProcessIdentity | None = None) -> Job | None:
        """Expire stale leases and take back the jobs of dead workers, then take the oldest queued job for
        ``worker_id`` (or None), recording its ``process`` (:func:`service.jobs.liveness.current_process`)."""
        now = time.time()
        with self._write() as conn:
            self._expire(conn, now)
            self._reclaim_dead(conn, now)
            row = conn.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, rowid LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            host, pid, started = (process.host, process.pid, process.started) if process else (None, None, None)
            conn.execute(
                "UPDATE jobs SET state = 'running', worker_id = ?, attempts = attempts + 1, "
                "started_at = COALESCE(started_at, ?), heartbeat_at = ?, lease_expires = ?, "
                "worker_host = ?, worker_pid = ?, worker_started = ? WHERE id = ? AND state = 'queued'",
                (worker_id, now, now, now + self.lease_seconds, host, pid, started, row["id"]),
            )
            claimed = conn.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return Job.from_row(claimed)

    def heartbeat(self, job_id: str, worker_id: str) -> HeartbeatStatus:
        """Extend the lease of a job this worker owns: ``"ok"``, ``"cancel"`` (stop: a cancel was asked
        for) or ``"lost"`` (the job is no longer this worker's: stop without writing anything)."""
        now = time.time()
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE jobs SET heartbeat_at = ?, lease_expires = ? "
                "WHERE id = ? AND worker_id = ? AND state = 'running'",
                (now, now + self.lease_seconds, job_id, worker_id),
            ).rowcount
            if not updated:
                return "lost"
            (cancel,) = conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return "cancel" if cancel else "ok"

    def set_progress(self, job_id: str, worker_id: str, progress: Mapping[str, Any]) -> HeartbeatStatus:
        """Write progress (and extend the lease, since the worker is evidently alive); same answer as
        :meth:`heartbeat`."""
        now = time.time()
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE jobs SET progress = ?, progress_seq = progress_seq + 1, heartbeat_at = ?, lease_expires = ? "
                "WHERE id = ? AND worker_id = ? AND state = 'running'",
                (_dumps(progress), now, now + self.lease_seconds, job_id, worker_id),
            ).rowcount
            if not updated:
                return "lost"
            (cancel,) = conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return "cancel" if cancel else "ok"

    def finish(
        self,
        job_id: str,
        worker_id: str,
        state: str,
        *,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
        counters: Mapping[str, float] | None = None,
    ) -> bool:
        """Write the terminal ``state`` with its result or error (and add ``counters``) in one transaction.

        Returns False, writing nothing, when the job is no longer this worker's.
        """
        if state not in TERMINAL_STATES:
            raise ValueError(f"{state!r} is not a terminal state")
        now = time.time()
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE jobs SET state = ?, result = ?, error = ?, finished_at = ?, lease_expires = NULL "
                "WHERE id = ? AND worker_id = ? AND state = 'running'",
                (
                    state,
                    None if result is None else _dumps(result),
                    None if error is None else _dumps(error),
                    now,
                    job_id,
                    worker_id,
                ),
            ).rowcount
            if updated and counters:
                self._add_counters(conn, counters)
        if not updated:
            _logger.warning(
                "job %s: %s not recorded, the job is no longer owned by worker %s", job_id, state, worker_id
            )
        return bool(updated)

    def release(self, job_id: str, worker_id: str) -> bool:
        """Give a running job back (worker shutdown): queued again, this attempt not counted; cancelled
        instead when a cancel was asked for."""
        now = time.time()
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE jobs SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END, "
                "finished_at = CASE WHEN cancel_requested THEN ? ELSE NULL END, "
                f"attempts = max(attempts - 1, 0), {_UNCLAIMED} WHERE id = ? AND worker_id = ? AND state = 'running'",
                (now, job_id, worker_id),
            ).rowcount
        return bool(updated)

    def expire_leases(self) -> int:
        """Requeue (or fail, after ``max_attempts``) running jobs whose lease expired; returns how many."""
        with self._write() as conn:
            return self._expire(conn, time.time())

    def _expire(self, conn: sqlite3.Connection, now: float) -> int:
        stale = conn.execute(
            f"SELECT {_LOST_COLUMNS} FROM jobs WHERE state = 'running' AND lease_expires < ?", (now,)
        ).fetchall()
        for row in stale:
            self._take_back(conn, row, now, "lease of worker %s expired")
        return len(stale)

    def reclaim_dead(self) -> int:
        """Take back (as :meth:`expire_leases` does) the running jobs whose worker process ran on this host and is
        provably dead (service/jobs/liveness.py), without waiting for their leases; returns how many. Reads only,
        unless there is one to take back."""
        host = host_identity()
        if host is None:
            return 0
        rows = self._conn().execute(
            f"SELECT {_LOST_COLUMNS} FROM jobs WHERE state = 'running' AND worker_host = ?", (host,)
        )
        if not any(_dead(row) for row in rows):
            return 0
        with self._write() as conn:
            return self._reclaim_dead(conn, time.time())

    def _reclaim_dead(self, conn: sqlite3.Connection, now: float) -> int:
        host = host_identity()
        if host is None:
            return 0
        rows = conn.execute(f"SELECT {_LOST_COLUMNS} FROM jobs WHERE state = 'running' AND worker_host = ?", (host,))
        dead = [row for row in rows if _dead(row)]
        for row in dead:
            self._take_back(conn, row, now, f"worker %s (pid {row['worker_pid']}) is dead")
        return len(dead)

    @staticmethod
    def _take_back(conn: sqlite3.Connection, row: sqlite3.Row, now: float, why: str) -> None:
        """A running job whose worker is lost: queued again, cancelled when a cancel was asked for, or failed with
        ``worker_lost`` after ``max_attempts`` claims."""
        if row["cancel_requested"]:
            conn.execute(
                f"UPDATE jobs SET state = 'cancelled', finished_at = ?, {_UNCLAIMED} WHERE id = ?", (now, row["id"])
            )
        elif row["attempts"] >= row["max_attempts"]:
            error = {
                "code": "worker_lost",
                "detail": f"the worker running this job stopped responding {row['attempts']} time(s) "
                f"(max_job_attempts={row['max_attempts']}); see the worker logs, then submit the job again",
            }
            conn.execute(
                f"UPDATE jobs SET state = 'failed', error = ?, finished_at = ?, {_UNCLAIMED} WHERE id = ?",
                (_dumps(error), now, row["id"]),
            )
        else:
            conn.execute(f"UPDATE jobs SET state = 'queued', {_UNCLAIMED} WHERE id = ?", (row["id"],))
        _logger.warning(
            f"job %s: {why} (attempt %d of %d)", row["id"], row["worker_id"], row["attempts"], row["max_attempts"]
        )

    @staticmethod
    def _add_counters(conn: sqlite3.Connection, counters: Mapping[str, float]) -> None:
        for name, value in counters.items():
            conn.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, float(value)),
            )

    def register_worker(self, worker_id: str, *, pid: int, host: str) -> None:
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO workers (id, pid, host, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?)",
                (worker_id, pid, host, now, now),
            )

    def worker_heartbeat(self, worker_id: str, job_id: str | None = None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE workers SET heartbeat_at = ?, job_id = ? WHERE id = ?", (time.time(), job_id, worker_id)
            )

    def unregister_worker(self, worker_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def live_workers(self, max_age_seconds: float) -> list[dict[str, Any]]:
        """Workers whose last heartbeat is at most ``max_age_seconds`` old."""
        rows = self._conn().execute(
            "SELECT * FROM workers WHERE heartbeat_at >= ? ORDER BY started_at", (time.time() - max_age_seconds,)
        )
        return [dict(row) for row in rows]

    def prune_workers(self, max_age_seconds: float) -> int:
        """Forget workers silent for longer than ``max_age_seconds``."""
        with self._write() as conn:
            return conn.execute("DELETE FROM workers WHERE heartbeat_at < ?", (time.time() - max_age_seconds,)).rowcount
