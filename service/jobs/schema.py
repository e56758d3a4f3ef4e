"""The job store's file: its schema and version, creating it, and refusing one that cannot serve (fail closed).

Separate from :mod:`service.jobs.store`, which holds the job state changes, because opening the file is its own
concern: what counts as a fresh store and what as a damaged one. Only an absent file becomes a fresh store; it
is built whole beside its name and hard-linked into place, so a second process starting at the same moment (the
web process and its workers) never meets a half-made file. A file that exists but is unreadable, fails its
integrity check, has a newer schema, or has no jobs table (a zero-byte file, a dropped table, some other SQLite
file) raises :class:`StoreCorrupt` before anything is written to it, with what is wrong and how to recover.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

from service.atomic import fsync_dir

__all__ = ["SCHEMA_VERSION", "StoreCorrupt", "check_store_file", "create_store_file", "migrate"]

#: 2 added ``jobs.owner`` (the per-key quota), 3 the claiming process (``jobs.worker_host``, ``worker_pid``,
#: ``worker_started``: service/jobs/liveness.py); an older store is migrated in place.
SCHEMA_VERSION = 3
#: Columns added after schema 1, with their types: :func:`migrate` adds the ones an older store lacks.
_ADDED_COLUMNS = {"owner": "TEXT", "worker_host": "TEXT", "worker_pid": "INTEGER", "worker_started": "INTEGER"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('ranking', 'finetune')),
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    request TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    progress TEXT,
    progress_seq INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat_at REAL,
    lease_expires REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    worker_id TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    worker_host TEXT,
    worker_pid INTEGER,
    worker_started INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, created_at);
CREATE INDEX IF NOT EXISTS jobs_owner_state ON jobs (owner, state);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    pid INTEGER,
    host TEXT,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    job_id TEXT
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT
);
"""

#: How to get going again, said by every StoreCorrupt.
_RECOVER = "restore it from a backup, or move it aside (its jobs are then lost) to start with an empty store"


class StoreCorrupt(RuntimeError):
    """The store file exists but cannot be used (unreadable, failed ``PRAGMA quick_check``, a newer schema, no
    jobs table): start-up stops rather than lose jobs or start over silently (fail closed)."""


def create_store_file(path: Path) -> None:
    """A fresh store at ``path``: built whole in a file beside it, then hard-linked into place, which fails if
    another process got there first (its store is then used)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.new")
    try:
        with contextlib.closing(sqlite3.connect(tmp, isolation_level=None)) as conn:
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(f"BEGIN; {_SCHEMA}; PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def check_store_file(connect: Callable[[], sqlite3.Connection], path: Path) -> None:
    """Read-only checks of the existing store at ``path``, opened by ``connect`` (so a damaged file is left exactly
    as it was found).

    Raises
    ------
    StoreCorrupt
        Unreadable, failed ``PRAGMA quick_check``, a schema newer than this code, or no jobs table.
    """
    try:
        conn = connect()
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:  # "file is not a database", "database disk image is malformed"
        raise StoreCorrupt(f"job store {path} cannot be read ({err}); {_RECOVER}") from err
    if check != "ok":
        raise StoreCorrupt(f"job store {path} failed its integrity check ({check}); {_RECOVER}")
    if version > SCHEMA_VERSION:
        raise StoreCorrupt(
            f"job store {path} has schema {version}, newer than this code ({SCHEMA_VERSION}); "
            "run the backbone-rank that wrote it"
        )
    if "jobs" not in tables:
        # create_store_file makes a whole store before it exists under this name: this is a damaged file.
        what = f"(schema {version}) has no jobs table" if tables else f"is empty ({path.stat().st_size} bytes)"
        raise StoreCorrupt(f"job store {path} {what}: its jobs are gone; {_RECOVER}")


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a checked store to :data:`SCHEMA_VERSION` (idempotent), inside the caller's write transaction."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for column, kind in _ADDED_COLUMNS.items():
        if column not in present:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
