"""End to end: ``backbone-rank serve`` (real uvicorn on 127.0.0.1, a real worker process, a real SQLite file),
driven over HTTP by the Python client, curl-style requests and a headless Chromium; then kill -9 of the
worker and of the server mid-job.

The jobs are made slow on purpose where a test must catch them running: the worker's test hook
``fault_progress_delay_s`` sleeps at every progress event.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors.numpy import load_file

from service.client import Client, ClientError
from service.contract import FinetuneResult, RankingResult

from .conftest import REPO, ServerProcess, pid_alive, server_env, worker_pids, write_image_folder

BACKBONES = ["random:test_resnet", "random:test_vit"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("e2e")
    data = tmp / "data"
    write_image_folder(data / "pets", {"cat": 6, "dog": 6, "fox": 6}, size=16)
    write_image_folder(data / "big", {"a": 40, "b": 40}, size=16, seed=1)
    return {"tmp": tmp, "data": data, "db": tmp / "cache" / "jobs.sqlite3"}


@pytest.fixture(scope="module")
def server(env: dict[str, Any]) -> Iterator[ServerProcess]:
    extra = {"BACKBONE_RANK_BATCH_SIZE": "8", "BACKBONE_RANK_FAULT_PROGRESS_DELAY_S": "0.1"}
    # Two workers: when one is killed, the other (already warm) reclaims its job once the lease expires.
    proc = ServerProcess(server_env(env["tmp"], env["data"], **extra), env["tmp"], workers=2).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url) as c:
        yield c


@pytest.fixture(scope="module")
def ranked(client: Client, env: dict[str, Any]) -> dict[str, Any]:
    """One real ranking, followed over SSE; shared by the tests that need a finished one."""
    events: list[dict[str, Any]] = []
    job = client.submit_ranking(env["data"] / "pets", BACKBONES, estimators=["logme", "leep", "nce"])
    final = client.wait("ranking", job["id"], on_progress=events.append, timeout=300)
    return {"job": final, "events": events}


def test_rank_follows_sse_to_the_ranked_result(ranked: dict[str, Any], client: Client) -> None:
    job = ranked["job"]
    assert job["state"] == "succeeded", job["error"]
    result = job["result"]
    assert sorted(b["id"] for b in result["backbones"]) == sorted(BACKBONES)
    assert [b["rank"] for b in result["backbones"]] == [1, 2]
    assert result["class_map"] == {"cat": 0, "dog": 1, "fox": 2}
    assert all(set(b["scores"]) == {"logme", "leep", "nce"} for b in result["backbones"])
    stages = [e.get("stage") for e in ranked["events"]]
    assert "extract" in stages and stages[-1] == "done", stages
    assert any(e.get("backbone") in BACKBONES and e.get("total") == 18 for e in ranked["events"])
    # Reading it again gives the same stored result.
    assert client.get_ranking(job["id"])["result"] == result


def test_client_rank_returns_the_result_and_raises_codes(client: Client, env: dict[str, Any]) -> None:
    result = client.rank(env["data"] / "pets", BACKBONES, estimators=["logme"], timeout=300)
    assert isinstance(result, RankingResult) and result.schema_version == 2
    assert [b.rank for b in result.backbones] == [1, 2]
    assert all(b.from_cache for b in result.backbones)  # same images, same backbones: the feature cache
    # the effective request: the server's defaults filled in under the request's own field names
    assert result.request is not None and result.request.estimators == ["logme"]
    assert result.request.device == "cpu" and result.request.batch_size == 8 and result.request.cache is True
    assert result.environment is not None and result.environment.device == "cpu"
    with pytest.raises(ClientError) as refused:
        client.rank("/etc", BACKBONES)
    assert refused.value.code == "path_outside_roots" and refused.value.status == 403
    with pytest.raises(ClientError) as failed:  # found by the worker: the job fails with the same code
        client.rank(env["data"] / "pets", ["resnet10t.c3_in1k"], timeout=300)
    assert failed.value.code == "weights_unavailable" and failed.value.body["state"] == "failed"


def test_raw_http_contract(server: ServerProcess, env: dict[str, Any]) -> None:
    body = {"dataset": {"kind": "folder", "path": str(env["data"] / "pets")}, "backbones": BACKBONES}
    headers = {"Idempotency-Key": "e2e-key-1"}
    first = httpx.post(f"{server.url}/v1/rankings", json=body, headers=headers)
    again = httpx.post(f"{server.url}/v1/rankings", json=body, headers=headers)
    assert first.status_code == 202 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
    reused = httpx.post(f"{server.url}/v1/rankings", json={**body, "seed": 3}, headers=headers)
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
    bad = httpx.post(f"{server.url}/v1/rankings", content=b"{nope", headers={"content-type": "application/json"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    json_type = {"content-type": "application/json"}
    big = httpx.post(f"{server.url}/v1/rankings", content=b"x" * (2 << 20), headers=json_type)
    assert big.status_code == 413 and big.json()["code"] == "request_too_large"
    # SSE over the wire: event/data lines, ending with `end` and the terminal state.
    with httpx.stream("GET", f"{server.url}{first.json()['events_url']}", timeout=300) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    assert re.findall(r"^event: (\w+)$", text, re.M)[-1] == "end"
    assert '"state": "succeeded"' in text.rsplit("event: end", 1)[1]
    finished = httpx.delete(f"{server.url}{first.json()['url']}")
    assert finished.status_code == 409 and finished.json()["code"] == "job_finished"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert re.search(r'backbone_rank_jobs\{kind="ranking",state="succeeded"\} [1-9]', metrics)
    assert "backbone_rank_workers_alive 2.0" in metrics
    assert httpx.get(f"{server.url}/v1/rankings/{'f' * 32}").json()["code"] == "job_not_found"


def test_finetune_the_winner_and_download_its_weights(
    ranked: dict[str, Any], client: Client, server: ServerProcess, tmp_path: Path
) -> None:
    ranking = ranked["job"]
    result = client.finetune(ranking_id=ranking["id"], strategy="linear", epochs=2, input_size=16, timeout=300)
    assert isinstance(result, FinetuneResult)
    assert result.backbone.id == ranking["result"]["backbones"][0]["id"]
    assert result.strategy == "linear" and result.ranking_id == ranking["id"]
    assert result.request is not None and result.request.backbone == result.backbone.id and result.request.epochs == 2
    assert 0.0 <= result.test_accuracy.mean <= 1.0
    assert result.job_id is not None
    path = client.download_weights(result.job_id, tmp_path / "model.safetensors")
    tensors = load_file(path)  # valid safetensors, no pickle
    assert tensors and all(t.size > 0 for t in tensors.values())
    head = [name for name, t in tensors.items() if t.ndim == 2 and t.shape[0] == 3]
    assert head, "the fine-tuned head has one row per class (3)"
    page = httpx.get(f"{server.url}/reports/finetunes/{result.job_id}")
    assert page.status_code == 200 and "<table" in page.text


def test_report_page_in_headless_chromium(ranked: dict[str, Any], server: ServerProcess, tmp_path: Path) -> None:
    from tests.reports.chromium import dump_dom, screenshot

    url = f"{server.url}/reports/rankings/{ranked['job']['id']}"
    png = screenshot(url, tmp_path / "ranking-report.png")
    assert png.stat().st_size > 10_000
    dom = dump_dom(url)
    table = re.search(r'<table id="ranking-table".*?</table>', dom, re.S)
    assert table is not None
    assert all(backbone in table.group(0) for backbone in BACKBONES)
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', dom)) >= 1


def test_cli_rank_with_server(server: ServerProcess, env: dict[str, Any], ranked: dict[str, Any]) -> None:
    command = [sys.executable, "-m", "service.cli", "rank", str(env["data"] / "pets"), "--server", server.url, "--json"]
    for backbone in BACKBONES:
        command += ["-b", backbone]
    out = subprocess.run(command + ["-e", "logme"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert sorted(b["id"] for b in result["backbones"]) == sorted(BACKBONES)
    refused = subprocess.run(
        [sys.executable, "-m", "service.cli", "rank", "/etc", "-b", "random:test_resnet", "--server", server.url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert refused.returncode == 2 and "path_outside_roots" in refused.stderr


def test_cli_rank_on_the_server_gives_the_local_rows(
    server: ServerProcess, env: dict[str, Any], tmp_path: Path
) -> None:
    """Every result-changing option reaches the server: --layer, --batch-size, --max-per-class, --streaming, -e."""
    options = ["--layer", "1", "--batch-size", "3", "--max-per-class", "4", "--streaming", "--seed", "5", "--no-cache"]
    options += ["-e", "logme", "-e", "h_score", "-e", "knn", "--device", "cpu"]
    base = [sys.executable, "-m", "service.cli", "rank", str(env["data"] / "big"), "--json", *options]
    for backbone in BACKBONES:
        base += ["-b", backbone]
    local_env = {**os.environ, "HF_HUB_OFFLINE": "1", "BACKBONE_RANK_CACHE_DIR": str(tmp_path / "cache")}
    local = subprocess.run(base, capture_output=True, text=True, timeout=300, cwd=REPO, env=local_env)
    remote = subprocess.run(base + ["--server", server.url], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    mine, theirs = RankingResult.model_validate_json(local.stdout), RankingResult.model_validate_json(remote.stdout)
    assert mine.request == theirs.request
    assert theirs.request is not None and theirs.request.layer == 1 and theirs.request.streaming
    assert theirs.request.batch_size == 3 and theirs.request.max_per_class == 4 and theirs.request.seed == 5
    assert theirs.request.cache is False and theirs.request.estimators == ["logme", "h_score", "knn"]
    assert [b.id for b in mine.backbones] == [b.id for b in theirs.backbones]
    for a, b in zip(mine.backbones, theirs.backbones, strict=True):
        assert a.rank == b.rank and a.ranks == b.ranks and a.n_images == b.n_images == 8 and not b.from_cache
        assert a.scores["knn"] is None and "streamed" in b.unscored["knn"]  # streaming reached the server
        for name in ("logme", "h_score"):
            assert b.scores[name] == pytest.approx(a.scores[name], rel=1e-6), name


def test_cli_refuses_a_local_weights_dir_for_the_server(server: ServerProcess, env: dict[str, Any]) -> None:
    command = [sys.executable, "-m", "service.cli", "rank", str(env["data"] / "pets"), "-b", "random:test_resnet"]
    command += ["--server", server.url, "--weights-dir", "/tmp"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert refused.returncode == 2
    assert " ".join(refused.stderr.split()).startswith("error [local_only_option]: --weights-dir names directories")
    # and the API refuses the field too, whoever sends it
    body = {"dataset": {"kind": "folder", "path": str(env["data"] / "pets")}, "backbones": ["random:test_resnet"]}
    answer = httpx.post(f"{server.url}/v1/rankings", json={**body, "weights_dirs": ["/tmp"]})
    assert answer.status_code == 422 and answer.json()["code"] == "local_only_option"


# --------------------------------------------------------------------------------------------- restarts


def _wait_for_progress(client: Client, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_ranking(job_id)
        if job["state"] == "running" and (job["progress"] or {}).get("stage") == "extract":
            return job
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached extraction")


def _job_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]


def test_kill_worker_mid_job_then_it_is_retried(client: Client, env: dict[str, Any], server: ServerProcess) -> None:
    job = client.submit_ranking(env["data"] / "big", BACKBONES, estimators=["logme"], seed=11)
    rows = _job_rows(env["db"])
    running = _wait_for_progress(client, job["id"])
    pid = worker_pids(env["db"])[running_worker(env["db"], job["id"])]
    os.kill(pid, signal.SIGKILL)
    # The job is reclaimed when its lease (3 s) expires, by the other worker, and finishes.
    final = client.wait("ranking", job["id"], timeout=300)
    assert final["state"] == "succeeded", (final["error"], server.tail())
    assert running["attempts"] == 1 and final["attempts"] == 2
    assert _job_rows(env["db"]) == rows  # not duplicated
    assert not pid_alive(pid)
    # The supervisor replaced the killed worker.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = [p for p in worker_pids(env["db"]).values() if pid_alive(p)]
        if len(live) == 2 and pid not in live:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the killed worker was not replaced: {worker_pids(env['db'])}\n{server.tail()}")


def running_worker(db: Path, job_id: str) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT worker_id FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


@pytest.mark.slow
def test_kill_server_mid_job_then_restart(env: dict[str, Any], server_factory: list[ServerProcess]) -> None:
    tmp = env["tmp"] / "restart"
    tmp.mkdir()
    extra = {"BACKBONE_RANK_BATCH_SIZE": "4", "BACKBONE_RANK_FAULT_PROGRESS_DELAY_S": "0.2"}
    first = ServerProcess(server_env(tmp, env["data"], **extra), tmp)
    server_factory.append(first)
    first.start()
    with Client(first.url) as c:
        job = c.submit_ranking(env["data"] / "big", BACKBONES, estimators=["logme"], idempotency_key="restart-1")
        _wait_for_progress(c, job["id"])
    workers = worker_pids(tmp / "cache" / "jobs.sqlite3")
    first.kill()
    # Its worker notices that its parent is gone, gives the job back and exits: no orphan keeps running.
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in workers.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(pid_alive(p) for p in workers.values()), first.tail()
    second = ServerProcess(server_env(tmp, env["data"], **extra), tmp)
    server_factory.append(second)
    second.start()
    with Client(second.url) as c:
        kept = c.get_ranking(job["id"])
        assert kept["state"] in ("queued", "running", "succeeded")  # still there after the crash
        # An idempotent resubmission after the restart returns the same job.
        again = c.submit_ranking(env["data"] / "big", BACKBONES, estimators=["logme"], idempotency_key="restart-1")
        assert again["id"] == job["id"]
        final = c.wait("ranking", job["id"], timeout=300)
    assert final["state"] == "succeeded", (final["error"], second.tail())
    assert final["attempts"] in (1, 2)
    assert _job_rows(tmp / "cache" / "jobs.sqlite3") == 1
