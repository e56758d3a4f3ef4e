"""Real worker processes killed outright: the job of a ``kill -9``-ed worker is taken back within seconds (not at the
end of its 60 s lease) and then runs to its end exactly once; a worker whose parent (``serve``'s supervisor) was
``kill -9``-ed stops within a second or two and gives its job back.

The workers are ``service.jobs.worker.main`` with stand-in jobs (tests/service/stand_in_worker.py): no torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.jobs.liveness import host_identity
from service.jobs.rows import Job
from service.jobs.store import JobStore
from service.main import create_app

from .conftest import REPO, pid_alive

LEASE = 60.0


@pytest.fixture
def long_lease(tmp_path: Path, data_root: Path) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", data_roots=[data_root], job_lease_seconds=LEASE)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, killed (if still running) and reaped at its end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "BACKBONE_RANK_CACHE_DIR": str(settings.cache_dir),
        "BACKBONE_RANK_JOB_LEASE_SECONDS": str(settings.job_lease_seconds),
        "BACKBONE_RANK_WORKER_POLL_SECONDS": "0.1",
        "HF_HUB_OFFLINE": "1",
    }


def _stand_in(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.service.stand_in_worker"],
            cwd=REPO,
            env=_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_for(what: str, condition: Callable[[], Any], timeout: float, log: Path) -> float:
    """Seconds until ``condition()`` held."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what}: not within {timeout} s\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    return time.monotonic() - began


def _long_job(settings: Settings, tmp_path: Path) -> tuple[JobStore, Job, Path, Path]:
    """The store, a stand-in job of 100 s (2000 steps), the file its end is written to, the workers' log."""
    store = JobStore(settings.database_path, lease_seconds=LEASE).initialize()  # type: ignore[arg-type]
    done, log = tmp_path / "done.txt", tmp_path / "workers.log"
    job, _ = store.submit("ranking", {"steps": 2000, "done_file": str(done)})
    return store, job, done, log


def _running(store: JobStore, job_id: str) -> Callable[[], bool]:
    def check() -> bool:
        job = store.get(job_id)
        return job is not None and job.state == "running" and (job.progress or {}).get("done", 0) >= 3

    return check


@pytest.mark.skipif(host_identity() is None, reason="no /proc: a dead worker's job waits for its lease here")
def test_a_killed_worker_s_job_is_requeued_within_seconds_then_runs_once(
    long_lease: Settings, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    store, job, done, log = _long_job(long_lease, tmp_path)
    first = _stand_in(long_lease, log)
    processes.append(first)
    _wait_for("the first worker runs the job", _running(store, job.id), 120, log)
    claimed = store.get(job.id)
    assert claimed.worker_pid == first.pid and claimed.attempts == 1
    os.kill(first.pid, signal.SIGKILL)  # not reaped yet: a zombie still holds the pid, and counts as dead
    # The web process's reaper finds the dead worker on this host and requeues its job, 60 s before the lease ends.
    with TestClient(create_app(long_lease)):
        requeued = _wait_for("the job is requeued", lambda: store.get(job.id).state == "queued", 10, log)
    assert requeued < 5, requeued
    print(f"requeued {requeued:.2f} s after the kill")
    taken_back = store.get(job.id)
    assert taken_back.attempts == 1 and taken_back.worker_id is None and taken_back.worker_pid is None
    assert store.get(job.id).lease_expires is None
    first.wait(timeout=30)
    # Another worker runs it to its end, once: the killed attempt wrote nothing.
    store._conn().execute("UPDATE jobs SET request = json_set(request, '$.steps', 10) WHERE id = ?", (job.id,))
    second = _stand_in(long_lease, log)
    processes.append(second)
    _wait_for("the job succeeds", lambda: store.get(job.id).state == "succeeded", 120, log)
    final = store.get(job.id)
    assert final.attempts == 2 and final.result == {"steps": 10}
    assert done.read_text().splitlines() == [f"{job.id} {second.pid}"]
    assert len(store.list_jobs()) == 1


_PARENT = """
import sys, time
from service.serve import WorkerSupervisor
supervisor = WorkerSupervisor(1, command=[sys.executable, "-m", "tests.service.stand_in_worker"])
supervisor.start()
print(supervisor.processes[0].pid, flush=True)
time.sleep(600)
"""


def test_a_worker_whose_parent_was_killed_stops_within_two_seconds_and_gives_its_job_back(
    long_lease: Settings, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    store, job, done, log = _long_job(long_lease, tmp_path)
    with open(log, "ab") as out:
        parent = subprocess.Popen(
            [sys.executable, "-c", _PARENT], cwd=REPO, env=_env(long_lease), stdout=subprocess.PIPE, stderr=out
        )
    processes.append(parent)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    _wait_for("the worker runs the job", _running(store, job.id), 120, log)
    assert store.get(job.id).worker_pid == worker
    os.kill(parent.pid, signal.SIGKILL)
    gone = _wait_for("the orphaned worker exits", lambda: not pid_alive(worker), 30, log)
    assert gone < 2.0, gone  # the heartbeat's lease/3 (20 s here) was the only check while a job ran
    print(f"the orphan exited {gone:.2f} s after its parent was killed")
    released = store.get(job.id)
    assert released.state == "queued" and released.attempts == 0 and not done.exists()
    assert "parent process" in log.read_text()


def test_shutting_the_api_down_waits_for_the_reapers_store_call_before_closing_the_store(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing the store's connections under a sweep in flight crashed a test run (a segfault in sqlite3)."""
    import threading

    from fastapi.testclient import TestClient

    from service import main
    from service.jobs.store import JobStore

    events: list[str] = []
    sweeping = threading.Event()
    real_reclaim, real_close = JobStore.reclaim_dead, JobStore.close

    def slow_reclaim(self: JobStore) -> int:
        sweeping.set()
        time.sleep(0.5)
        count = real_reclaim(self)
        events.append("sweep done")
        return count

    def close(self: JobStore) -> None:
        events.append("close")
        real_close(self)

    monkeypatch.setattr(main, "DEAD_WORKER_SWEEP_S", 0.05)
    monkeypatch.setattr(JobStore, "reclaim_dead", slow_reclaim)
    monkeypatch.setattr(JobStore, "close", close)
    with TestClient(main.create_app(settings)):
        assert sweeping.wait(10)
    assert events[:2] == ["sweep done", "close"]
