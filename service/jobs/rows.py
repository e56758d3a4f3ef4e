"""One row of the job store as Python sees it: the :class:`Job` record, read from SQLite, with a damaged row's
columns set aside (``corrupt``) rather than raised; and the columns a listing reads instead of whole results.

Separate from :mod:`service.jobs.store`, which holds the state changes (claims, leases, outcomes): reading a row is
what the web process does most, and the corrupt-row rules are easier to check in one place.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from service.errors import JobCorrupt

__all__ = ["JOB_KINDS", "JOB_STATES", "LISTED_COLUMNS", "TERMINAL_STATES", "Job", "is_object"]

_logger = logging.getLogger("service.jobs.store")

JOB_KINDS: tuple[str, ...] = ("ranking", "finetune")
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

#: A listing's columns: all but the request and the result, which it checks in SQL instead of reading.
LISTED_COLUMNS = (
    "id, kind, state, request_hash, idempotency_key, progress, progress_seq, error, created_at, started_at, "
    "finished_at, heartbeat_at, lease_expires, attempts, max_attempts, worker_id, cancel_requested, owner, "
    "worker_host, worker_pid, worker_started"
)


def is_object(column: str) -> str:
    """SQL that is 1 when ``column`` holds a JSON object, 0 otherwise (never an error on broken text)."""
    return f"CASE WHEN json_valid({column}) THEN json_type({column}) = 'object' ELSE 0 END"


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(frozen=True)
class Job:
    """One row of the store (times are Unix seconds)."""

    id: str
    kind: str
    state: str
    request: dict[str, Any]
    request_hash: str
    idempotency_key: str | None
    progress: dict[str, Any] | None
    progress_seq: int
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None
    lease_expires: float | None
    attempts: int
    max_attempts: int
    worker_id: str | None
    cancel_requested: bool
    owner: str | None = None
    #: The process that claimed the job last (service/jobs/liveness.py); None for a claim that did not say.
    worker_host: str | None = None
    worker_pid: int | None = None
    worker_started: int | None = None
    #: The JSON columns of the row that could not be read (then None, the request ``{}``, and the error
    #: ``{"code": "corrupt", ...}``); empty for a sound row.
    unreadable: tuple[str, ...] = ()
    #: A listing's parts of the result (``list_jobs(result_paths=...)``; its ``request`` is then ``{}`` and its
    #: ``result`` None, unread); None when the whole row was read.
    result_parts: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_row(cls, row: sqlite3.Row, parts: tuple[str, ...] = ()) -> Job:
        """The job of a row of ``SELECT *``, or of a listing's (:data:`LISTED_COLUMNS`, ``request_ok``,
        ``result_ok`` and ``part_<i>`` for each name in ``parts``)."""
        data = dict(row)
        listing = "result" not in data
        unreadable = []
        for name in ("request", "progress", "result", "error"):
            if name not in data:  # a listing checked this column in SQL (``<name>_ok``) instead of reading it
                if not data.pop(f"{name}_ok"):
                    unreadable.append(name)
                data[name] = {} if name == "request" else None
                continue
            try:
                value = _loads(data[name])
            except (ValueError, TypeError):  # invalid JSON text, or a non-text value in a JSON column
                value = None
                unreadable.append(name)
            else:
                if value is not None and not isinstance(value, dict):
                    value = None
                    unreadable.append(name)
            data[name] = value
        if data["request"] is None:
            if "request" not in unreadable:
                unreadable.append("request")
            data["request"] = {}
        if listing:
            data["result_parts"] = {name: _loads(data.pop(f"part_{i}")) for i, name in enumerate(parts)}
        if unreadable:
            _logger.warning("job %s: stored %s cannot be read", data["id"], ", ".join(unreadable))
            data["error"] = {
                "code": JobCorrupt.code,
                "detail": f"the stored {', '.join(unreadable)} of this job cannot be read (the job store's row is "
                "damaged); this job cannot run or be reported: submit it again",
            }
        data["cancel_requested"] = bool(data["cancel_requested"])
        return cls(**data, unreadable=tuple(unreadable))
