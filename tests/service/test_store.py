"""The SQLite job store: atomic claims, leases, bounded retries, idempotency, durability."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.errors import IdempotencyKeyReused, JobFinished, JobNotFound, QueueFull, QuotaExceeded
from service.jobs.liveness import ProcessIdentity, current_process, host_identity, process_identity
from service.jobs.schema import SCHEMA_VERSION, StoreCorrupt
from service.jobs.store import JobStore

REQUEST = {"dataset": {"kind": "builtin", "name": "digits"}, "backbones": ["random:resnet10t"]}


def open_store(path: Path, **kwargs: float) -> JobStore:
    return JobStore(path, **kwargs).initialize()  # type: ignore[arg-type]


def test_submit_get_roundtrip_and_strict_json(tmp_path: Path) -> None:
    store = open_store(tmp_path / "jobs.db")
    job, created = store.submit("ranking", REQUEST)
    assert created and job.state == "queued" and job.attempts == 0 and len(job.id) == 32
    assert store.get(job.id) == job
    assert store.get("nope") is None
    worker = "w1"
    assert store.claim(worker).id == job.id
    # NaN/inf are not JSON: they are stored as null so every client can parse the result.
    assert store.finish(job.id, worker, "succeeded", result={"score": float("nan"), "x": [1.5, float("inf")]})
    assert store.get(job.id).result == {"score": None, "x": [1.5, None]}


def test_idempotency_key_same_body_same_job_other_body_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path / "jobs.db")
    first, created = store.submit("ranking", REQUEST, idempotency_key="k1")
    again, created_again = store.submit("ranking", dict(REQUEST), idempotency_key="k1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyKeyReused):
        store.submit("ranking", {**REQUEST, "seed": 1}, idempotency_key="k1")
    with pytest.raises(IdempotencyKeyReused):  # same body under another kind is another request
        store.submit("finetune", REQUEST, idempotency_key="k1")
    assert len(store.list_jobs()) == 1
    # The database enforces it, not only the code path above.
    conn = sqlite3.connect(tmp_path / "jobs.db")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO jobs (id, kind, state, request, request_hash, idempotency_key, created_at, max_attempts) "
            "VALUES ('x', 'ranking', 'queued', '{}', 'h', 'k1', 0, 3)"
        )


def in_threads(path: Path, n: int, use: Callable[[JobStore], Any]) -> list[Any]:
    """``use(store)`` in ``n`` threads at once, each with its own store (connection) as separate processes would
    have; their results, once none raised."""
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        store = JobStore(path)
        try:
            results.append(use(store))
        except BaseException as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)
        finally:
            store.close()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    return results


def test_concurrent_submissions_with_one_key_make_one_job(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    open_store(path)
    ids = in_threads(path, 12, lambda store: store.submit("ranking", REQUEST, idempotency_key="same")[0].id)
    assert len(ids) == 12 and len(set(ids)) == 1
    assert len(open_store(path).list_jobs()) == 1


def test_claims_are_atomic_across_connections(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = open_store(path)
    submitted = {store.submit("ranking", {**REQUEST, "seed": i})[0].id for i in range(30)}
    claimed: dict[str, list[str]] = {"a": [], "b": []}

    def claimer(name: str) -> None:
        own = JobStore(path)
        while (job := own.claim(name)) is not None:
            claimed[name].append(job.id)
        own.close()

    threads = [threading.Thread(target=claimer, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = claimed["a"] + claimed["b"]
    assert sorted(everything) == sorted(submitted)  # each job exactly once
    assert all(store.get(i).state == "running" and store.get(i).attempts == 1 for i in submitted)


def test_expired_lease_is_reclaimed_and_the_old_worker_is_fenced_off(tmp_path: Path) -> None:
    store = open_store(tmp_path / "jobs.db", lease_seconds=0.2)
    job, _ = store.submit("ranking", REQUEST)
    assert store.claim("w1").id == job.id
    assert store.heartbeat(job.id, "w1") == "ok"
    assert store.claim("w2") is None  # lease still held
    time.sleep(0.3)
    again = store.claim("w2")
    assert again is not None and again.id == job.id and again.attempts == 2 and again.worker_id == "w2"
    # The first worker lost the job: every write of its is refused.
    assert store.heartbeat(job.id, "w1") == "lost"
    assert store.set_progress(job.id, "w1", {"stage": "extract"}) == "lost"
    assert not store.finish(job.id, "w1", "succeeded", result={"from": "w1"})
    assert store.finish(job.id, "w2", "succeeded", result={"from": "w2"})
    final = store.get(job.id)
    assert final.state == "succeeded" and final.result == {"from": "w2"}


def test_heartbeats_keep_the_lease(tmp_path: Path) -> None:
    store = open_store(tmp_path / "jobs.db", lease_seconds=0.3)
    job, _ = store.submit("ranking", REQUEST)
    store.claim("w1")
    for _ in range(4):
        time.sleep(0.15)
        assert store.heartbeat(job.id, "w1") == "ok"
    assert store.expire_leases() == 0 and store.get(job.id).state == "running"


def test_after_max_attempts_an_expired_job_fails_with_worker_lost(tmp_path: Path) -> None:
    store = open_store(tmp_path / "jobs.db", lease_seconds=0.1, max_attempts=2)
    job, _ = store.submit("ranking", REQUEST)
    for attempt in (1, 2):
        claimed = store.claim(f"w{attempt}")
        assert claimed is not None and claimed.attempts == attempt
        time.sleep(0.15)
    assert store.expire_leases() == 1
    final = store.get(job.id)
    assert final.state == "failed" and final.error["code"] == "worker_lost"
    assert final.finished_at is not None and final.worker_id is None
    assert store.claim("w3") is None  # never running again


def test_cancel_queued_running_finished_unknown(tmp_path: Path) -> None:
    store = open_store(tmp_path / "jobs.db")
    queued, _ = store.submit("ranking", {**REQUEST, "seed": 1})
    assert store.request_cancel(queued.id).state == "cancelled"
    running, _ = store.submit("ranking", {**REQUEST, "seed": 2})
    assert store.claim("w1").id == running.id
    assert store.request_cancel(running.id).state == "running"
    assert store.heartbeat(running.id, "w1") == "cancel"
    assert store.finish(running.id, "w1", "cancelled")
    with pytest.raises(JobFinished):
        store.request_cancel(running.id)
    with pytest.raises(JobNotFound):
        store.request_cancel("0" * 32)


def test_release_requeues_without_counting_the_attempt(tmp_path: Path) -> None:
    store = open_store(tmp_path / "jobs.db")
    job, _ = store.submit("ranking", REQUEST)
    store.claim("w1")
    assert store.release(job.id, "w1")
    released = store.get(job.id)
    assert released.state == "queued" and released.attempts == 0 and released.worker_id is None
    assert not store.release(job.id, "w1")


def test_queue_limit(tmp_path: Path) -> None:
    store = open_store(tmp_path / "jobs.db")
    for seed in range(3):
        store.submit("ranking", {**REQUEST, "seed": seed}, max_queued=3)
    with pytest.raises(QueueFull):
        store.submit("ranking", {**REQUEST, "seed": 99}, max_queued=3)
    store.claim("w1")  # running jobs do not count
    store.submit("ranking", {**REQUEST, "seed": 99}, max_queued=3)
    # An idempotent replay is never refused for a full queue: the job already exists.
    store.submit("ranking", {**REQUEST, "seed": 7}, idempotency_key="k")
    assert store.submit("ranking", {**REQUEST, "seed": 7}, idempotency_key="k", max_queued=1)[1] is False


def test_counts_counters_and_workers(tmp_path: Path) -> None:
    store = open_store(tmp_path / "jobs.db")
    a, _ = store.submit("ranking", {**REQUEST, "seed": 1})
    store.submit("finetune", {**REQUEST, "seed": 2})
    store.claim("w1")
    store.finish(a.id, "w1", "succeeded", result={}, counters={"feature_cache_hits": 2, "extraction_seconds": 1.5})
    counts = store.counts()
    assert counts[("ranking", "succeeded")] == 1 and counts[("finetune", "queued")] == 1
    assert counts[("ranking", "running")] == 0
    assert store.counters() == {"feature_cache_hits": 2.0, "extraction_seconds": 1.5}
    store.register_worker("w1", pid=123, host="h")
    assert [w["id"] for w in store.live_workers(60)] == ["w1"]
    assert store.live_workers(-1) == []
    store.unregister_worker("w1")
    assert store.live_workers(60) == []


def test_jobs_survive_reopening_and_corruption_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = open_store(path)
    job, _ = store.submit("ranking", REQUEST, idempotency_key="k")
    store.close()
    reopened = open_store(path)
    assert reopened.get(job.id).request == REQUEST
    assert reopened.submit("ranking", REQUEST, idempotency_key="k")[0].id == job.id
    reopened.close()
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreCorrupt):
        open_store(bad)


def _drop_jobs(path: Path, user_version: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE jobs")
        conn.execute(f"PRAGMA user_version={user_version}")
    conn.close()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda path: path.write_bytes(b""), "is empty (0 bytes)"),
        (lambda path: _drop_jobs(path, 2), "(schema 2) has no jobs table"),
        (lambda path: _drop_jobs(path, 1), "(schema 1) has no jobs table"),
    ],
    ids=["zero-byte", "jobs-dropped", "jobs-dropped-schema-1"],
)
def test_a_store_without_its_jobs_table_fails_closed_and_is_left_as_found(tmp_path: Path, damage, says: str) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = open_store(path)
    store.submit("ranking", REQUEST)
    store.close()
    damage(path)
    before = path.read_bytes()
    with pytest.raises(StoreCorrupt) as info:
        open_store(path)
    message = str(info.value)
    assert says in message and str(path) in message and "move it aside" in message and "backup" in message
    assert path.read_bytes() == before  # never re-created empty, nothing written


def test_an_absent_store_is_created_whole_once_even_by_processes_starting_together(tmp_path: Path) -> None:
    path = tmp_path / "new" / "jobs.sqlite3"
    in_threads(path, 8, JobStore.initialize)
    assert sorted(p.name for p in path.parent.iterdir() if ".new" in p.name) == []  # no build left behind
    store = open_store(path)
    assert store.submit("ranking", REQUEST)[1] and len(store.list_jobs()) == 1


def test_a_schema_1_store_is_migrated_with_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = open_store(path)
    job, _ = store.submit("ranking", REQUEST)
    store.close()
    with sqlite3.connect(path) as conn:  # back to schema 1: no owner column, no claiming process
        conn.execute("DROP INDEX jobs_owner_state")
        for column in ("owner", "worker_host", "worker_pid", "worker_started"):
            conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
        conn.execute("PRAGMA user_version=1")
    conn.close()
    migrated = open_store(path)
    assert migrated.get(job.id).request == REQUEST and migrated.get(job.id).owner is None
    assert migrated.submit("ranking", {**REQUEST, "seed": 1}, owner="k")[0].owner == "k"
    (version,) = migrated._conn().execute("PRAGMA user_version").fetchone()
    assert version == SCHEMA_VERSION == 3
    me = current_process()
    claimed = migrated.claim("w", me)
    assert claimed is not None and claimed.worker_pid == (None if me is None else os.getpid())


def test_per_owner_quota_counts_queued_and_running_jobs_of_that_owner(tmp_path: Path) -> None:
    store = open_store(tmp_path / "jobs.db")
    for seed in range(2):
        store.submit("ranking", {**REQUEST, "seed": seed}, owner="a", max_active_per_owner=2)
    store.claim("w1")  # running still counts
    with pytest.raises(QuotaExceeded) as info:
        store.submit("finetune", {**REQUEST, "seed": 9}, owner="a", max_active_per_owner=2)
    assert info.value.code == "quota_exceeded" and info.value.context == {"active": 2, "limit": 2}
    store.submit("ranking", {**REQUEST, "seed": 9}, owner="b", max_active_per_owner=2)  # another key
    store.request_cancel(store.list_jobs(state="queued")[-1].id)  # a's queued one ends
    store.submit("ranking", {**REQUEST, "seed": 10}, owner="a", max_active_per_owner=2)


def test_a_row_with_broken_json_loads_alone_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = open_store(path)
    ids = [store.submit("ranking", {**REQUEST, "seed": i})[0].id for i in range(3)]
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE jobs SET request = '{\"dataset\": ' WHERE id = ?", (ids[1],))
        conn.execute("UPDATE jobs SET progress = '[1, 2]' WHERE id = ?", (ids[2],))  # JSON, but not an object
    conn.close()
    bad = store.get(ids[1])
    assert bad.unreadable == ("request",) and bad.request == {} and bad.error["code"] == "corrupt"
    assert store.get(ids[2]).unreadable == ("progress",) and store.get(ids[2]).request["seed"] == 2
    assert store.get(ids[0]).unreadable == () and store.get(ids[0]).error is None
    assert [j.id for j in store.list_jobs()] == ids[::-1]
    assert store.request_cancel(ids[1]).state == "cancelled"


def _dead_child() -> ProcessIdentity:
    """The identity a claim of a child process recorded, once that child was killed (a zombie: not reaped yet)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = process_identity(child.pid)
    child.kill()
    child.wait()
    assert identity is not None
    return identity


@pytest.mark.skipif(host_identity() is None, reason="no /proc: a dead worker's job waits for its lease here")
def test_a_claim_records_its_process_and_a_provably_dead_one_is_taken_back_at_once(tmp_path: Path) -> None:
    store = open_store(tmp_path / "jobs.db", lease_seconds=60.0, max_attempts=2)
    me = current_process()
    assert me is not None and me.pid == os.getpid()
    alive, _ = store.submit("ranking", {**REQUEST, "seed": 0})
    claimed = store.claim("w-alive", me)
    assert claimed.id == alive.id and (claimed.worker_host, claimed.worker_pid, claimed.worker_started) == (
        me.host,
        me.pid,
        me.started,
    )
    cases = {
        "dead": _dead_child(),
        "pid reused": ProcessIdentity(me.host, me.pid, me.started + 1),  # the pid now runs another process
        "another host": ProcessIdentity("elsewhere/boot/pid:[1]", 999_999, 1),  # cannot be told: the lease decides
    }
    jobs = {}
    for name in cases:
        jobs[name], _ = store.submit("ranking", {**REQUEST, "seed": name})
        assert store.claim(f"w-{name}", me).id == jobs[name].id
    for name, identity in cases.items():  # as if ``identity`` had claimed it (its claim would sweep the others)
        store._conn().execute(
            "UPDATE jobs SET worker_host = ?, worker_pid = ?, worker_started = ? WHERE id = ?",
            (identity.host, identity.pid, identity.started, jobs[name].id),
        )
    assert store.reclaim_dead() == 2 and store.reclaim_dead() == 0
    for name, state in {"dead": "queued", "pid reused": "queued", "another host": "running"}.items():
        job = store.get(jobs[name].id)
        assert job.state == state and job.attempts == 1, name
        assert (job.worker_id is None) == (state == "queued") and (job.worker_pid is None) == (state == "queued")
    assert store.get(alive.id).state == "running"  # a live worker keeps its job
    # Claims sweep too: the dead worker's job is taken back and claimed again in one transaction, and a job
    # whose worker died on its last attempt fails with worker_lost.
    again = store.claim("w-2", _dead_child())
    assert again.id == jobs["dead"].id and again.attempts == 2
    store.claim("w-3", me)
    assert store.get(jobs["dead"].id).state == "failed"
    assert store.get(jobs["dead"].id).error["code"] == "worker_lost"


def test_a_listing_reads_parts_of_each_result_and_a_damaged_row_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = open_store(path)
    result = {"backbones": [{"id": "a", "p_best": 0.75}, {"id": "b"}], "blob": "x" * 10_000}
    ids = [store.submit("ranking", {**REQUEST, "seed": i})[0].id for i in range(4)]
    for job_id in ids[:3]:
        store.claim("w")
        store.finish(job_id, "w", "succeeded", result=result)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE jobs SET result = '{\"backbones\": [' WHERE id = ?", (ids[1],))
        conn.execute("UPDATE jobs SET request = '[1]' WHERE id = ?", (ids[2],))
    conn.close()
    paths = {"winner": "$.backbones[0].id", "p_best": "$.backbones[0].p_best", "missing": "$.nothing"}
    listed = {job.id: job for job in store.list_jobs("ranking", result_paths=paths)}
    assert list(listed) == ids[::-1]
    assert listed[ids[0]].result_parts == {"winner": "a", "p_best": 0.75, "missing": None}
    assert listed[ids[0]].result is None and listed[ids[0]].request == {} and listed[ids[0]].error is None
    assert listed[ids[1]].unreadable == ("result",) and listed[ids[1]].error["code"] == "corrupt"
    assert listed[ids[1]].result_parts == {"winner": None, "p_best": None, "missing": None}
    assert listed[ids[2]].unreadable == ("request",) and listed[ids[2]].result_parts["winner"] == "a"
    assert listed[ids[3]].state == "queued" and listed[ids[3]].unreadable == ()
    assert listed[ids[3]].result_parts == {"winner": None, "p_best": None, "missing": None}
    # The full rows say the same about what is damaged.
    assert [store.get(i).unreadable for i in ids] == [(), ("result",), ("request",), ()]
