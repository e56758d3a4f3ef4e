"""The worker in process: outcomes, cancel, shutdown, heartbeats (stand-in executors), then real jobs
submitted through the API and run by the real executor (torch), for the bad inputs only a worker can see."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.errors import EmptyDataset
from service.jobs.executor import JobContext
from service.jobs.store import JobStore
from service.jobs.worker import Worker
from service.main import create_app
from service.pipeline.calibration.model import DEFAULT_CALIBRATION_PATH, PRIOR_FIELDS, load_calibration

from .conftest import write_image_folder

REQUEST = {"dataset": {"kind": "builtin", "name": "digits"}, "backbones": ["random:resnet10t"]}


def make_worker(settings: Settings, run: Any, counters: Any = None) -> tuple[Worker, JobStore]:
    store = JobStore(settings.database_path, lease_seconds=settings.job_lease_seconds).initialize()  # type: ignore[arg-type]
    worker = Worker(settings, worker_id="w-test", executors={"ranking": (run, counters), "finetune": (run, None)})
    return worker, store


def test_success_writes_result_progress_and_counters(settings: Settings) -> None:
    def run(request: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
        ctx.progress({"stage": "extract", "backbone": "b", "done": 1, "total": 2}, force=True)
        return {"backbones": [{"id": "b", "from_cache": True}], "echo": request["backbones"]}

    worker, store = make_worker(settings, run, lambda result: {"feature_cache_hits": 1})
    job, _ = store.submit("ranking", REQUEST)
    assert worker.run(max_jobs=1, publish_registry=False) == 1
    done = store.get(job.id)
    assert done.state == "succeeded" and done.result["echo"] == ["random:resnet10t"]
    assert done.progress == {"stage": "extract", "backbone": "b", "done": 1, "total": 2}
    assert done.attempts == 1 and done.finished_at is not None
    assert store.counters() == {"feature_cache_hits": 1.0}
    assert store.live_workers(60) == []  # unregistered on exit


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (EmptyDataset("dataset 'x' has no usable images", path="x"), "empty_dataset"),
        (ValueError("no backbone given"), "invalid_request"),
        (RuntimeError("boom at /secret/path"), "internal_error"),
    ],
)
def test_errors_become_failed_jobs_with_codes(settings: Settings, error: Exception, code: str) -> None:
    def run(request: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
        raise error

    worker, store = make_worker(settings, run)
    job, _ = store.submit("ranking", REQUEST)
    worker.run(max_jobs=1, publish_registry=False)
    failed = store.get(job.id)
    assert failed.state == "failed" and failed.error["code"] == code and failed.result is None
    if code == "internal_error":
        assert "/secret/path" not in failed.error["detail"]  # the traceback goes to the log, not the API


def test_a_job_whose_request_cannot_be_read_fails_as_corrupt_and_the_next_one_runs(settings: Settings) -> None:
    import sqlite3

    ran: list[Any] = []

    def run(request: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
        ran.append(request["seed"])
        return {}

    worker, store = make_worker(settings, run)
    bad, _ = store.submit("ranking", {**REQUEST, "seed": 1})
    good, _ = store.submit("ranking", {**REQUEST, "seed": 2})
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE jobs SET request = '{\"dataset\"' WHERE id = ?", (bad.id,))
    conn.close()
    assert worker.run(max_jobs=2, publish_registry=False) == 2
    failed = store.get(bad.id)
    assert failed.state == "failed" and failed.error["code"] == "corrupt" and failed.attempts == 1
    assert store.get(good.id).state == "succeeded" and ran == [2]


def _run_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, kwargs={"max_jobs": 1, "publish_registry": False})
    thread.start()
    return thread


def _looping_run(started: threading.Event) -> Any:
    def run(request: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
        for step in range(2000):
            ctx.progress({"stage": "extract", "done": step, "total": 2000}, force=True)
            started.set()
            time.sleep(0.01)
        return {"finished": True}

    return run


def test_cancel_of_a_running_job_stops_it(settings: Settings) -> None:
    started = threading.Event()
    worker, store = make_worker(settings, _looping_run(started))
    job, _ = store.submit("ranking", REQUEST)
    thread = _run_in_thread(worker)
    assert started.wait(10)
    store.request_cancel(job.id)
    thread.join(20)
    assert not thread.is_alive()
    cancelled = store.get(job.id)
    assert cancelled.state == "cancelled" and cancelled.result is None
    assert cancelled.progress["done"] < 1999


def test_shutdown_releases_the_running_job(settings: Settings) -> None:
    started = threading.Event()
    worker, store = make_worker(settings, _looping_run(started))
    job, _ = store.submit("ranking", REQUEST)
    thread = _run_in_thread(worker)
    assert started.wait(10)
    worker.shutting_down.set()
    thread.join(20)
    released = store.get(job.id)
    assert released.state == "queued" and released.attempts == 0 and released.worker_id is None


def test_heartbeats_keep_a_long_silent_job_alive(tmp_path: Path, data_root: Path) -> None:
    settings = Settings(cache_dir=tmp_path / "cache", data_roots=[data_root], job_lease_seconds=0.6)

    def run(request: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
        time.sleep(2.0)  # no progress for more than three leases: only the heartbeat thread keeps it
        return {"ok": True}

    worker, store = make_worker(settings, run)
    job, _ = store.submit("ranking", REQUEST)
    thread = _run_in_thread(worker)
    time.sleep(1.2)
    other = JobStore(settings.database_path, lease_seconds=0.6).initialize()  # type: ignore[arg-type]
    assert other.claim("thief") is None and other.expire_leases() == 0
    thread.join(10)
    assert store.get(job.id).state == "succeeded" and store.get(job.id).attempts == 1


# ------------------------------------------------------------------------------- real executor (torch)


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def run_jobs(settings: Settings, n: int = 1) -> None:
    assert Worker(settings, worker_id="w-real").run(max_jobs=n, publish_registry=False) == n


def submit(api: TestClient, path: Path, backbones: list[str], **extra: Any) -> str:
    body = {"dataset": {"kind": "folder", "path": str(path)}, "backbones": backbones, **extra}
    response = api.post("/v1/rankings", json=body)
    assert response.status_code == 202, response.json()
    return response.json()["id"]


def test_real_ranking_through_the_api(api: TestClient, settings: Settings, data_root: Path) -> None:
    dataset = write_image_folder(data_root / "shapes", {"a": 6, "b": 6, "c": 6}, size=16)
    job_id = submit(api, dataset, ["random:test_resnet", "random:test_vit"], estimators=["logme", "leep", "nce"])
    run_jobs(settings)
    job = api.get(f"/v1/rankings/{job_id}").json()
    assert job["state"] == "succeeded", job["error"]
    result = job["result"]
    assert sorted(b["id"] for b in result["backbones"]) == ["random:test_resnet", "random:test_vit"]
    assert [b["rank"] for b in result["backbones"]] == [1, 2]
    assert set(result["backbones"][0]["scores"]) == {"logme", "leep", "nce"}
    assert result["class_map"] == {"a": 0, "b": 1, "c": 2} and result["dataset"]["n_images"] == 18
    assert job["progress"]["stage"] == "done" and job["progress"]["backbones_done"] == 2
    assert job["links"]["report"] == f"/reports/rankings/{job_id}"
    page = api.get(job["links"]["report"])
    assert page.status_code == 200 and "random:test_vit" in page.text and "<table" in page.text
    # Ranked again: both backbones come from the feature cache, and /metrics says so.
    submit(api, dataset, ["random:test_resnet", "random:test_vit"], estimators=["logme"])
    run_jobs(settings)
    metrics = api.get("/metrics").text
    assert "backbone_rank_feature_cache_hits_total 2.0" in metrics
    assert "backbone_rank_feature_cache_misses_total 2.0" in metrics


def _a_fused_estimator() -> str:
    """An estimator of the packaged fusion (p_best needs the calibrated order, which needs one of its members)."""
    return next(m for m in load_calibration(DEFAULT_CALIBRATION_PATH).fusion.members if m not in PRIOR_FIELDS)


def test_p_best_on_request(api: TestClient, settings: Settings, data_root: Path) -> None:
    dataset = write_image_folder(data_root / "shapes", {"a": 8, "b": 8, "c": 8}, size=16)
    backbones = ["random:test_resnet", "random:test_vit"]
    estimators = ["class_means", _a_fused_estimator()]
    plain = submit(api, dataset, backbones, estimators=estimators)
    asked = submit(api, dataset, backbones, estimators=estimators, n_bootstrap=6, seed=3)
    run_jobs(settings, 2)
    results = [api.get(f"/v1/rankings/{job_id}").json()["result"] for job_id in (plain, asked)]
    assert all(b["p_best"] is None for b in results[0]["backbones"]) and results[0]["fusion"]["p_best"] is None
    p_best = [b["p_best"] for b in results[1]["backbones"]]
    assert all(0.0 <= p <= 1.0 for p in p_best) and sum(p_best) == pytest.approx(1.0)
    assert results[1]["fusion"]["p_best"]["n_bootstrap"] == 6 and results[1]["fusion"]["p_best"]["seed"] == 3
    assert api.get(f"/v1/rankings/{asked}").json()["request"]["n_bootstrap"] == 6


def test_cancel_reaches_a_ranking_in_its_p_best_replicates(
    api: TestClient, settings: Settings, data_root: Path
) -> None:
    dataset = write_image_folder(data_root / "shapes", {"a": 8, "b": 8, "c": 8}, size=16)
    job_id = submit(
        api, dataset, ["random:test_resnet", "random:test_vit"], estimators=[_a_fused_estimator()], n_bootstrap=200
    )
    thread = threading.Thread(target=run_jobs, args=(settings,))
    thread.start()
    deadline = time.monotonic() + 120
    while (api.get(f"/v1/rankings/{job_id}").json()["progress"] or {}).get("stage") != "p_best":
        assert time.monotonic() < deadline and thread.is_alive(), "the ranking never reached its p_best replicates"
        time.sleep(0.05)
    assert api.delete(f"/v1/rankings/{job_id}").status_code == 202
    thread.join(60)
    job = api.get(f"/v1/rankings/{job_id}").json()
    assert job["state"] == "cancelled" and job["result"] is None
    assert job["progress"]["stage"] == "p_best" and job["progress"]["done"] < 200


def test_bad_inputs_only_a_worker_can_see_fail_the_job_with_their_code(
    api: TestClient, settings: Settings, data_root: Path
) -> None:
    empty = data_root / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    (empty / "a" / "notes.txt").write_text("not an image")
    one_class = write_image_folder(data_root / "one", {"only": 4}, size=16)
    corrupt = write_image_folder(data_root / "corrupt", {"a": 4, "b": 4}, size=16)
    (corrupt / "a" / "001.png").write_bytes((corrupt / "a" / "001.png").read_bytes()[:60])  # truncated
    (corrupt / "b" / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)  # broken header
    cases = {
        "empty_dataset": submit(api, empty, ["random:test_resnet"]),
        "too_few_classes": submit(api, one_class, ["random:test_resnet"]),
        "weights_unavailable": submit(api, corrupt, ["resnet10t.c3_in1k"]),  # pretrained, nowhere offline
        "unknown_backbone": submit(api, corrupt, ["resnet999"]),  # no registry snapshot: the worker finds it
        "corrupt_ok": submit(api, corrupt, ["random:test_resnet"], estimators=["logme"]),
    }
    # A manifest whose label holds a NUL byte (it would reach the report): refused at loading like NUL in a path.
    manifest = data_root / "nul.jsonl"
    rows = [{"path": f"corrupt/{c}/{i:03d}.png", "label": "c\x00t" if c == "a" else c} for c in "ab" for i in (0, 3)]
    manifest.write_text("\n".join(json.dumps(row) for row in rows))
    nul_label = {"dataset": {"kind": "manifest", "path": str(manifest)}, "backbones": ["random:test_resnet"]}
    response = api.post("/v1/rankings", json=nul_label)
    assert response.status_code == 202
    cases["invalid_dataset"] = response.json()["id"]
    run_jobs(settings, len(cases))
    for code, job_id in cases.items():
        job = api.get(f"/v1/rankings/{job_id}").json()
        if code == "corrupt_ok":
            # Corrupt images are skipped and counted; the job still succeeds.
            assert job["state"] == "succeeded", job["error"]
            skipped = job["result"]["dataset"]["skipped"]
            assert sum(skipped.values()) + job["result"]["failed_images"] == 2
            assert job["result"]["backbones"][0]["n_images"] == 8 - 2
        else:
            assert job["state"] == "failed" and job["error"]["code"] == code, job["error"]
            assert job["error"]["detail"]
    assert "NUL" in api.get(f"/v1/rankings/{cases['invalid_dataset']}").json()["error"]["detail"]
