"""Choosing the executor: the request field, the settings, the error without Ray (engine, API, CLI), the shard plan,
the runtime each Ray actor rebuilds from the settings, and that nothing imports Ray unless the executor ``ray`` runs.

None of these start Ray (test_ray_extraction.py does); the ones that need Ray installed skip without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

from service import cli
from service.bootstrap import RuntimeRecipe, cli_runtime, service_runtime
from service.config import Settings
from service.contract import RankingRequest
from service.errors import ExecutorUnavailable
from service.main import create_app
from service.pipeline.scaleout.check import RAY_EXTRA, ray_installed
from service.pipeline.scaleout.extraction import plan_shards

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray as if not installed: ``import ray`` raises ImportError and find_spec finds nothing."""
    monkeypatch.setitem(sys.modules, "ray", None)
    assert not ray_installed()


def _ranking(path: Path | str, **extra: object) -> dict:
    return {"dataset": {"kind": "folder", "path": str(path)}, "backbones": ["random:test_resnet"], **extra}


def test_the_request_takes_local_ray_or_nothing():
    assert RankingRequest(**_ranking("/d")).executor is None  # the settings decide
    assert RankingRequest(**_ranking("/d", executor="ray")).executor == "ray"
    with pytest.raises(ValidationError, match="'local' or 'ray'"):
        RankingRequest(**_ranking("/d", executor="dask"))
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        RankingRequest(**_ranking("/d", ray_address="auto"))  # a request never names a cluster


def test_settings_reach_the_runtime_and_the_recipe_ignores_the_actors_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKBONE_RANK_EXECUTOR", "ray")
    monkeypatch.setenv("BACKBONE_RANK_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("BACKBONE_RANK_RAY_ACTORS", "3")
    monkeypatch.setenv("BACKBONE_RANK_RAY_GPUS_PER_ACTOR", "0.5")
    settings = Settings(cache_dir=tmp_path, batch_size=12, api_keys=["secret"])
    for build, service in ((cli_runtime, False), (service_runtime, True)):
        runtime = build(settings)
        assert runtime.executor == "ray"
        assert (runtime.ray.address, runtime.ray.actors, runtime.ray.gpus_per_actor) == ("ray://head:10001", 3, 0.5)
        recipe = runtime.ray.actor_runtime
        assert isinstance(recipe, RuntimeRecipe) and recipe.service is service
        assert recipe.settings["api_keys"] == []  # an actor serves no API
        # an actor's environment says otherwise: the recipe's values win, every field is given
        monkeypatch.setenv("BACKBONE_RANK_BATCH_SIZE", "99")
        monkeypatch.setenv("BACKBONE_RANK_CACHE_DIR", str(tmp_path / "elsewhere"))
        rebuilt = recipe()
        monkeypatch.delenv("BACKBONE_RANK_BATCH_SIZE")
        monkeypatch.delenv("BACKBONE_RANK_CACHE_DIR")
        assert (rebuilt.batch_size, rebuilt.cache_dir, rebuilt.roots) == (12, tmp_path, runtime.roots)
        assert rebuilt.accepts_local_paths is runtime.accepts_local_paths and rebuilt.hub == runtime.hub


def test_the_engine_refuses_ray_without_ray_before_loading_anything(no_ray, tmp_path):
    from service.pipeline.engine import rank

    runtime = cli_runtime(Settings(cache_dir=tmp_path))
    request = RankingRequest(**_ranking(tmp_path / "no-such-folder", executor="ray"))
    with pytest.raises(ExecutorUnavailable, match=r"pip install 'backbone-rank\[ray\]'") as caught:
        rank(request, runtime)
    assert caught.value.code == "executor_unavailable" and caught.value.status == 422


def test_the_api_refuses_ray_without_ray_and_queues_nothing(no_ray, tmp_path):
    data = tmp_path / "data"
    (data / "pets" / "cat").mkdir(parents=True)
    for executor_setting, body_executor in (("local", "ray"), ("ray", None)):
        settings = Settings(cache_dir=tmp_path / executor_setting, data_roots=[data], executor=executor_setting)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            extra = {"executor": body_executor} if body_executor else {}
            response = client.post("/v1/rankings", json=_ranking(data / "pets", **extra))
            assert response.status_code == 422, response.text
            assert response.json()["code"] == "executor_unavailable"
            assert RAY_EXTRA in response.json()["detail"]
            assert client.get("/v1/rankings").json() == []
            # the local executor is not affected
            response = client.post("/v1/rankings", json=_ranking(data / "pets", executor="local"))
            assert response.status_code == 202, response.text


def test_the_cli_says_how_to_install_ray(no_ray, tmp_path):
    outcome = CliRunner().invoke(
        cli.app,
        ["rank", str(tmp_path), "-b", "random:test_resnet", "--executor", "ray"],
        env={"COLUMNS": "300", "HF_HUB_OFFLINE": "1", "BACKBONE_RANK_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert outcome.exit_code == 2, outcome.output
    message = " ".join(outcome.stderr.split())
    assert message.startswith("error [executor_unavailable]: the executor 'ray' needs Ray"), message
    assert RAY_EXTRA in message


@pytest.mark.parametrize(
    ("n_items", "batch_size", "shard_images", "actors", "expected"),
    [
        (30, 8, 8, 2, [(0, 8), (8, 16), (16, 24), (24, 30)]),
        (400, 64, 2048, 2, [(0, 256), (256, 400)]),  # at least one shard per actor, of whole batches
        (400, 64, 100, 1, [(0, 128), (128, 256), (256, 384), (384, 400)]),  # shard size rounded up to batches
        (5, 64, 2048, 4, [(0, 5)]),  # one batch: one shard
        (0, 8, 8, 2, []),
    ],
)
def test_shards_are_contiguous_whole_batches(n_items, batch_size, shard_images, actors, expected):
    shards = plan_shards(n_items, batch_size, shard_images, actors)
    assert shards == expected
    assert all(start % batch_size == 0 for start, _ in shards)


def test_nothing_imports_ray_unless_the_executor_ray_runs(tmp_path):
    """The web process, the CLI, the worker and a local ranking never import Ray (an optional extra)."""
    folder = tmp_path / "pets"
    script = f"""
import sys
import numpy as np
from PIL import Image
from pathlib import Path
for k, name in enumerate(["cat", "dog"]):
    (Path({str(folder)!r}) / name).mkdir(parents=True)
    for i in range(3):
        image = Image.fromarray(np.full((16, 16, 3), 60 * k + 20 * i, np.uint8))
        image.save(Path({str(folder)!r}) / name / f"{{i}}.png")
import service.bootstrap, service.cli, service.jobs.worker, service.main, service.pipeline.engine, service.validate
from service.bootstrap import cli_runtime, start
from service.config import Settings
from service.contract import RankingRequest
from service.pipeline.engine import rank
settings = Settings(cache_dir={str(tmp_path / "cache")!r}, device="cpu")
start(settings)
request = RankingRequest(dataset={{"kind": "folder", "path": {str(folder)!r}}}, backbones=["random:test_resnet"],
                         estimators=["logme"], executor="local")
assert rank(request, cli_runtime(settings)).environment.executor == {{"kind": "local"}}
print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.skipif(not ray_installed(), reason="needs Ray (pip install 'backbone-rank[ray]')")
def test_no_local_cluster_when_ray_was_imported_without_the_loopback_switch():
    """Ray imported without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 would listen on every interface: refused."""
    script = """
import ray
from service.errors import ExecutorUnavailable
from service.pipeline.scaleout.session import ray_session
try:
    with ray_session(""):
        print("started")
except ExecutorUnavailable as err:
    print(err.code, ray.is_initialized())
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "executor_unavailable False"
