"""The result models: files written before the contract (schema_version 1) still load, a newer version is
refused, and the REST API's OpenAPI document carries the result schemas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from service.contract import (
    RESULT_SCHEMA_VERSION,
    BenchmarkResult,
    FinetuneResult,
    RankingResult,
    load_result,
    result_kind,
)

DATA = Path(__file__).parent / "data"
RECORDED = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_version_1_files_written_before_the_contract_still_load():
    # ranking-v1.json / finetune-v1.json: `rank --json` and `finetune --json` of the code before this change
    ranking = load_result(json.loads((DATA / "ranking-v1.json").read_text()))
    assert isinstance(ranking, RankingResult) and ranking.schema_version == 1 and ranking.kind == "ranking"
    assert ranking.request is None and ranking.environment is None
    assert [row.rank for row in ranking.backbones] == [1, 2] and ranking.dataset.ref.name == "digits"
    finetune = load_result(json.loads((DATA / "finetune-v1.json").read_text()))
    assert isinstance(finetune, FinetuneResult) and finetune.schema_version == 1 and finetune.request is None
    assert 0.0 <= finetune.test_accuracy.mean <= 1.0


@pytest.mark.parametrize("path", sorted(RECORDED.glob("benchmark-*.json")), ids=lambda p: p.name)
def test_the_recorded_benchmarks_load(path):
    result = load_result(json.loads(path.read_text()))
    assert isinstance(result, BenchmarkResult) and len(result.targets) == 6 and result.summary


def test_a_result_round_trips_through_its_json_and_nonfinite_numbers_become_null():
    data = json.loads((DATA / "ranking-v1.json").read_text())
    data["backbones"][0]["mean_rank"] = math.inf  # a backbone no estimator applied to
    ranking = load_result(data)
    assert ranking.backbones[0].mean_rank is None  # type: ignore[union-attr]
    text = ranking.model_dump_json()
    assert "Infinity" not in text and "NaN" not in text
    assert load_result(json.loads(text)) == ranking


def test_newer_versions_and_non_results_are_refused_clearly():
    data = json.loads((DATA / "ranking-v1.json").read_text())
    with pytest.raises(ValueError, match=rf"schema_version {RESULT_SCHEMA_VERSION + 1} is newer.*upgrade"):
        load_result({**data, "schema_version": RESULT_SCHEMA_VERSION + 1})
    with pytest.raises(ValueError, match="not a backbone-rank result.*got keys: hello"):
        load_result({"hello": 1})
    assert result_kind([1, 2]) is None and result_kind({"kind": "calibration"}) is None
    with pytest.raises(ValueError, match="backbones"):
        load_result({**data, "backbones": "none"})


def test_openapi_documents_the_request_and_result_schemas(tmp_path):
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    settings = Settings(cache_dir=tmp_path / "cache", data_roots=[tmp_path])
    with TestClient(create_app(settings)) as client:
        spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("RankingRequest", "RankingResult", "BackboneRow", "FusionInfo", "FinetuneRequest", "FinetuneResult"):
        assert name in schemas, name

    def ref(schema: dict) -> str:
        return schema["$ref"].rsplit("/", 1)[1]

    get_ranking = spec["paths"]["/v1/rankings/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    job = schemas[ref(get_ranking["schema"])]
    assert {ref(s) for s in job["properties"]["result"]["anyOf"] if "$ref" in s} == {"RankingResult"}
    # null only for a job whose stored row cannot be read (error.code "corrupt")
    assert {ref(s) for s in job["properties"]["request"]["anyOf"] if "$ref" in s} == {"RankingRequest"}
    post = spec["paths"]["/v1/rankings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert ref(post) == "RankingRequest"  # the REST body IS the request model
    row = schemas["BackboneRow"]["properties"]
    assert {"rank", "scores", "ranks", "predicted_accuracy", "p_best", "unscored"} <= set(row)
    request_fields = set(schemas["RankingRequest"]["properties"])
    assert {"layer", "streaming", "n_bootstrap", "device", "batch_size", "cache", "weights_dirs"} <= request_fields
    get_finetune = spec["paths"]["/v1/finetunes/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert "FinetuneResult" in json.dumps(schemas[ref(get_finetune["schema"])])
