"""Every CLI option of ``rank``, ``finetune`` and ``benchmark`` reaches the request model, locally and with
``--server`` (one builder for both paths), or is refused with a message; none is silently dropped.

The engine and the client are replaced by recorders, so this runs in a second; the real server path is
tested end to end in tests/service/test_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from service import cli
from service.cli import benchmark as cli_benchmark
from service.cli import finetune as cli_finetune
from service.cli import rank as cli_rank
from service.contract import (
    BenchmarkRequest,
    BenchmarkResult,
    FinetuneRequest,
    FinetuneResult,
    RankingRequest,
    RankingResult,
    load_result,
)

DATA = Path(__file__).parent / "data"

#: Options that change no request field: how the result is shown, where it runs or is written.
PRESENTATION = {"json_output", "server", "out", "out_dir", "resume", "report", "winner"}
#: options about this machine, not the result: where weights may come from (the runtime's, not the request's)
HOST = {"offline"}


def _ranking() -> RankingResult:
    result = load_result(json.loads((DATA / "ranking-v1.json").read_text()))
    assert isinstance(result, RankingResult)
    return result


def _finetune() -> FinetuneResult:
    result = load_result(json.loads((DATA / "finetune-v1.json").read_text()))
    assert isinstance(result, FinetuneResult)
    return result


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the engine's entry points and the client's calls by recorders of the request they get."""
    seen: dict[str, Any] = {}

    def engine_rank(request: RankingRequest, runtime: Any, **kwargs: Any) -> RankingResult:
        seen["local"] = request
        return _ranking()

    def engine_finetune(request: FinetuneRequest, runtime: Any, **kwargs: Any) -> FinetuneResult:
        seen["local"], seen["finetune_kwargs"] = request, kwargs
        return _finetune()

    def engine_benchmark(request: BenchmarkRequest, runtime: Any, **kwargs: Any) -> BenchmarkResult:
        seen["local"] = request
        raise ValueError("recorded")  # the CLI reports it as a user error: enough for this test

    def client_rank(self: Any, request: RankingRequest, **kwargs: Any) -> RankingResult:
        seen["server"] = request
        return _ranking()

    def client_finetune(self: Any, request: FinetuneRequest, **kwargs: Any) -> FinetuneResult:
        seen["server"] = request
        return _finetune()

    import service.client
    import service.pipeline.engine as engine

    monkeypatch.setattr(engine, "rank", engine_rank)
    monkeypatch.setattr(engine, "finetune", engine_finetune)
    monkeypatch.setattr(engine, "benchmark", engine_benchmark)
    monkeypatch.setattr(service.client.Client, "rank", client_rank)
    monkeypatch.setattr(service.client.Client, "finetune", client_finetune)

    def local_runtime(offline: bool = False) -> object:
        seen["offline"] = offline
        return object()

    # where each command looks the name up when it runs (service/cli/_common.py defines it)
    for command_module in (cli_rank, cli_finetune, cli_benchmark):
        monkeypatch.setattr(command_module, "_local_runtime", local_runtime)
    return seen


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})


def _params(command: str) -> set[str]:
    click_app = typer.main.get_command(cli.app)
    return {param.name for param in click_app.commands[command].params}  # type: ignore[attr-defined]


RANK_ARGS = [
    "rank", "builtin:digits#val", "-b", "zoo:latin-resnet10t", "-b", "random:resnet10t", "-e", "logme", "-e", "knn",
    "--max-per-class", "7", "--seed", "3", "--device", "cpu", "--batch-size", "5", "--no-cache", "--layer", "2",
    "--streaming", "--bootstrap", "4", "--skip-unavailable", "--executor", "ray",
]  # fmt: skip
RANK_EXPECTED = {
    "dataset": {
        "kind": "builtin", "name": "digits", "split": "val", "path": None, "revision": None, "image_column": None,
        "label_column": None,
    },
    "backbones": ["zoo:latin-resnet10t", "random:resnet10t"],
    "skip_unavailable": True,
    "estimators": ["logme", "knn"],
    "max_per_class": 7,
    "seed": 3,
    "device": "cpu",
    "batch_size": 5,
    "cache": False,
    "layer": 2,
    "streaming": True,
    "layer_scores": False,
    "n_bootstrap": 4,
    "executor": "ray",
}
#: option (parameter name) -> the request field it sets
RANK_FIELDS = {
    "dataset": "dataset", "backbone": "backbones", "estimator": "estimators", "max_per_class": "max_per_class",
    "skip_unavailable": "skip_unavailable", "seed": "seed", "image_column": "dataset", "label_column": "dataset",
    "device": "device", "batch_size": "batch_size", "cache": "cache", "layer": "layer",
    "streaming": "streaming", "layer_scores": "layer_scores", "bootstrap": "n_bootstrap", "weights_dir": "weights_dirs",
    "executor": "executor",
    "upload": "dataset",  # a local folder sent to the server: its upload:<id> (tests/service/test_upload.py)
}  # fmt: skip


def test_every_rank_option_is_mapped_to_a_request_field_or_is_presentation():
    assert _params("rank") == set(RANK_FIELDS) | ((PRESENTATION | HOST) & _params("rank"))
    assert set(RANK_FIELDS.values()) == set(RankingRequest.model_fields)  # and every field has an option


@pytest.mark.parametrize("where", ["local", "server"])
def test_rank_options_reach_the_request(recorded, where):
    extra = ["--server", "http://127.0.0.1:9"] if where == "server" else ["--weights-dir", "/w"]
    outcome = _invoke(*RANK_ARGS, *extra, "--json")
    assert outcome.exit_code == 0, outcome.output
    request = recorded[where]
    assert isinstance(request, RankingRequest)
    assert request.model_dump(exclude={"weights_dirs"}) == RANK_EXPECTED
    assert request.weights_dirs == ([] if where == "server" else ["/w"])
    # --json prints the result model's document, the API's schema
    assert RankingResult.model_validate_json(outcome.stdout) == _ranking()


@pytest.mark.parametrize("where", ["local", "server"])
def test_layer_scores_reach_the_request_and_refuse_a_single_layer(recorded, where):
    extra = ["--server", "http://127.0.0.1:9"] if where == "server" else []
    outcome = _invoke("rank", "builtin:digits", "-b", "random:resnet10t", "--layer-scores", *extra, "--json")
    assert outcome.exit_code == 0, outcome.output
    assert recorded[where].layer_scores is True
    refused = _invoke("rank", "builtin:digits", "-b", "random:resnet10t", "--layer-scores", "--layer", "2", *extra)
    assert refused.exit_code != 0 and "leave 'layer' out" in refused.output


@pytest.mark.parametrize("where", ["local", "server"])
def test_a_hub_dataset_and_its_columns_reach_the_request(recorded, where):
    extra = ["--server", "http://127.0.0.1:9"] if where == "server" else []
    args = ["rank", "hf://datasets/org/pets@v1#test", "-b", "zoo:latin-resnet10t", "--label-column", "fine"]
    outcome = _invoke(*args, *extra, "--json")
    assert outcome.exit_code == 0, outcome.output
    assert recorded[where].dataset.model_dump(exclude_none=True) == {
        "kind": "hub", "name": "org/pets", "revision": "v1", "split": "test", "label_column": "fine",
    }  # fmt: skip
    outcome = _invoke("rank", "hf://datasets/pets", "-b", "zoo:latin-resnet10t", *extra)
    assert outcome.exit_code == 2 and "ORG/NAME" in outcome.stderr
    outcome = _invoke("rank", "data/pets", "-b", "zoo:latin-resnet10t", "--image-column", "img", *extra)
    assert outcome.exit_code == 2 and "applies to hub datasets" in outcome.stderr


@pytest.mark.parametrize("command", ["rank", "finetune"])
def test_offline_reaches_the_local_runtime_and_is_refused_for_a_server(recorded, command):
    args = RANK_ARGS if command == "rank" else ["finetune", "builtin:digits", "-b", "zoo:latin-resnet10t"]
    outcome = _invoke(*args, "--offline", "--json")
    assert outcome.exit_code == 0, outcome.output
    assert recorded["offline"] is True
    outcome = _invoke(*args, "--offline", "--server", "http://127.0.0.1:9")
    assert outcome.exit_code == 2 and "server" not in recorded
    assert " ".join(outcome.stderr.split()).startswith("error [invalid_request]: --offline applies to local runs")


def test_rank_refuses_a_local_weights_dir_for_a_server(recorded):
    outcome = _invoke(*RANK_ARGS, "--server", "http://127.0.0.1:9", "--weights-dir", "/w")
    assert outcome.exit_code == 2 and "server" not in recorded
    assert " ".join(outcome.stderr.split()).startswith("error [local_only_option]: --weights-dir names directories")


def test_rank_on_a_server_makes_a_relative_dataset_path_absolute(recorded, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _invoke("rank", "pets", "-b", "random:resnet10t", "--server", "http://127.0.0.1:9").exit_code == 0
    assert recorded["server"].dataset.path == str(tmp_path / "pets")
    assert _invoke("rank", "pets", "-b", "random:resnet10t").exit_code == 0
    assert recorded["local"].dataset.path == "pets"  # locally it is resolved where it runs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "Invalid value for '--batch-size'"),  # typer's own bounds
        (["--device", "gpu"], "error [invalid_request]: --device: String should match pattern"),
        (["--bootstrap", "1000"], "error [invalid_request]: --bootstrap: Input should be less than or equal to 200"),
        (["--executor", "dask"], "error [invalid_request]: --executor: Input should be 'local' or 'ray'"),
    ],
)
def test_rank_refuses_bad_values_naming_the_option(recorded, args, message):
    outcome = _invoke("rank", "builtin:digits", "-b", "random:resnet10t", *args)
    assert outcome.exit_code == 2 and message in " ".join(outcome.stderr.split())
    assert "local" not in recorded


FINETUNE_ARGS = [
    "--strategy", "partial", "--freeze-stages", "2", "--epochs", "3", "--lr", "0.01", "--lr", "0.1", "--seed", "1",
    "--seed", "2", "--input-size", "32", "--max-per-class", "9", "--batch-size", "16", "--device", "cpu",
]  # fmt: skip
FINETUNE_EXPECTED = {
    "strategy": "partial",
    "freeze_stages": 2,
    "epochs": 3,
    "lr_grid": [0.01, 0.1],
    "seeds": [1, 2],
    "input_size": 32,
    "max_per_class": 9,
    "batch_size": 16,
    "device": "cpu",
    "ranking_id": None,
}
FINETUNE_FIELDS = {
    "dataset": "dataset", "backbone": "backbone", "strategy": "strategy", "freeze_stages": "freeze_stages",
    "epochs": "epochs", "lr": "lr_grid",
    "seed": "seeds", "input_size": "input_size", "max_per_class": "max_per_class", "batch_size": "batch_size",
    "device": "device", "weights_dir": "weights_dirs", "image_column": "dataset", "label_column": "dataset",
    "upload": "dataset",  # a local folder sent to the server: its upload:<id> (tests/service/test_upload.py)
}  # fmt: skip


def test_every_finetune_option_is_mapped_to_a_request_field_or_is_presentation():
    assert _params("finetune") == set(FINETUNE_FIELDS) | ((PRESENTATION | HOST) & _params("finetune"))
    # ranking_id is the service's way to name a winner; the CLI's is --winner FILE
    assert set(FINETUNE_FIELDS.values()) == set(FinetuneRequest.model_fields) - {"ranking_id"}


@pytest.mark.parametrize("where", ["local", "server"])
def test_finetune_options_reach_the_request(recorded, where):
    extra = ["--server", "http://127.0.0.1:9"] if where == "server" else ["--weights-dir", "/w"]
    outcome = _invoke("finetune", "builtin:digits", "-b", "random:resnet10t", *FINETUNE_ARGS, *extra, "--json")
    assert outcome.exit_code == 0, outcome.output
    request = recorded[where]
    assert request.model_dump(exclude={"weights_dirs", "dataset", "backbone"}) == FINETUNE_EXPECTED
    assert request.backbone == "random:resnet10t" and request.dataset.name == "digits"
    assert FinetuneResult.model_validate_json(outcome.stdout) == _finetune()


def test_finetune_the_winner_of_a_saved_ranking_version_1(recorded):
    outcome = _invoke("finetune", "--winner", str(DATA / "ranking-v1.json"), "--epochs", "2")
    assert outcome.exit_code == 0, outcome.output
    request, winner = recorded["local"], _ranking().backbones[0]
    assert request.backbone == winner.id and request.epochs == 2
    assert request.dataset.model_dump(exclude_none=True) == {"kind": "builtin", "name": "digits"}
    assert recorded["finetune_kwargs"]["winner_of"] == _ranking()


def test_finetune_refuses_out_with_server_and_a_non_ranking_winner(recorded, tmp_path):
    outcome = _invoke("finetune", "builtin:digits", "-b", "x", "--server", "http://127.0.0.1:9", "--out", "o")
    assert outcome.exit_code == 2 and "--out saves weights on this machine" in " ".join(outcome.stderr.split())
    outcome = _invoke("finetune", "--winner", str(DATA / "finetune-v1.json"))
    assert outcome.exit_code == 2 and "is a finetune result, not a ranking" in " ".join(outcome.stderr.split())


BENCHMARK_FIELDS = {
    "suite": "suite", "target": "targets", "per_class": "per_class", "data_dir": "data_dir",
    "backbone_map": "backbone_map", "bootstrap": "n_bootstrap", "p_best": "p_best", "device": "device",
    "reuse": "reuse",
}  # fmt: skip


def test_every_benchmark_option_reaches_the_request(recorded):
    assert _params("benchmark") == set(BENCHMARK_FIELDS) | ((PRESENTATION | HOST) & _params("benchmark"))
    assert set(BENCHMARK_FIELDS.values()) == set(BenchmarkRequest.model_fields)
    outcome = _invoke(
        "benchmark", "--suite", "standard", "-t", "pets", "-t", "dtd", "--per-class", "5", "--data-dir", "/d",
        "-b", "googlenet=random:resnet10t", "--bootstrap", "50", "--p-best", "20", "--device", "cpu",
        "--reuse", "a.json", "--reuse", "b.json",
    )  # fmt: skip
    assert outcome.exit_code == 2 and "recorded" in outcome.stderr
    assert recorded["local"].model_dump() == {
        "suite": "standard",
        "targets": ["pets", "dtd"],
        "per_class": 5,
        "data_dir": "/d",
        "backbone_map": {"googlenet": "random:resnet10t"},
        "n_bootstrap": 50,
        "p_best": 20,
        "device": "cpu",
        "reuse": ["a.json", "b.json"],
    }
