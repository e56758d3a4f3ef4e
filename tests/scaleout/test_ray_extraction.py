"""The executor ``ray`` on a real two-node Ray cluster started here, bound to the loopback interface only.

Shown: a ranking extracted on Ray equals the local ranking (same rows in the same order, scores within 1e-6
relative, the layer scores too), in memory and streamed; the feature cache a Ray run fills (stages included) serves
a later local run; the shards ran on both nodes; an error inside a shard reaches the caller typed; a cancelled job's
actors are killed; and no Ray process (nor this driver) listens on anything but 127.0.0.1 while the actors work.

One cluster for the module (starting Ray costs seconds): ``ray.cluster_utils.Cluster`` with two nodes of one CPU,
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` set before Ray is imported (else Ray listens on every interface) and
``node_ip_address="127.0.0.1"``. The executor connects to it through the settings' address, as a CLI or a service
worker would (``BACKBONE_RANK_RAY_ADDRESS``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.bootstrap import cli_runtime, start
from service.config import Settings
from service.contract import RankingRequest, RankingResult
from service.pipeline.engine import rank
from service.pipeline.runtime import Runtime
from service.pipeline.scaleout.check import ray_installed
from service.pipeline.scaleout.session import LOOPBACK_ENV

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(not ray_installed(), reason="needs Ray (pip install 'backbone-rank[ray]')"),
]

#: test_vit and test_convnext share a preprocessing (one decode for both); test_resnet has its own.
BACKBONES = ["random:test_resnet", "random:test_vit", "random:test_convnext"]
#: Estimators from every family: moments (also streamed), the source head, the samples.
ESTIMATORS = ["logme", "h_score", "gbc", "transrate", "nce", "leep", "knn", "ridge_probe"]
STREAMED = ["logme", "h_score", "gbc", "transrate", "nce"]
CLASSES = 3
PER_CLASS = 10
BATCH = 8


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two Ray nodes of one CPU each, on 127.0.0.1 only; shut down after the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(LOOPBACK_ENV, "0")  # read by Ray at import, and by the processes it starts
        patch.setenv("HF_HUB_OFFLINE", "1")
        from ray.cluster_utils import Cluster

        head = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
        started = Cluster(initialize_head=True, head_node_args=head)
        try:
            started.add_node(num_cpus=1, node_ip_address="127.0.0.1")
            yield started
        finally:
            started.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of ten noisy 32 px images, each class its own colour."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k in range(CLASSES):
        (root / f"class{k}").mkdir()
        base = np.array([80 * k, 255 - 80 * k, 120], dtype=np.float64)
        for i in range(PER_CLASS):
            pixels = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{k}" / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def runtime(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    """The CLI's runtime, with the cluster's address, two actors of one CPU and shards of one batch (four shards)."""
    settings = Settings(
        cache_dir=tmp_path_factory.mktemp("cache"),
        device="cpu",
        batch_size=BATCH,
        ray_address=cluster.address,
        ray_actors=2,
        ray_cpus_per_actor=1,
        ray_shard_images=BATCH,
    )
    start(settings)
    return cli_runtime(settings)


def _request(folder: Path, **fields: Any) -> RankingRequest:
    """The test's ranking; with every stage scored (``layer_scores``, the stages' features from the same pass)
    unless it streams."""
    fields.setdefault("layer_scores", not fields.get("streaming", False))
    return RankingRequest(
        dataset={"kind": "folder", "path": str(folder)}, backbones=BACKBONES, estimators=ESTIMATORS, **fields
    )


def _assert_close(got: dict[str, float | None], expected: dict[str, float | None], where: Any) -> None:
    assert got.keys() == expected.keys(), where
    for name, value in got.items():
        if expected[name] is None:
            assert value is None, (where, name)
        else:
            assert value == pytest.approx(expected[name], rel=1e-6, abs=1e-12), (where, name)


def _assert_same_ranking(got: RankingResult, expected: RankingResult) -> None:
    """Same rows in the same order, every score within 1e-6 relative (None where None), the same ranks, and the same
    layer scores and advice."""
    assert [row.id for row in got.backbones] == [row.id for row in expected.backbones]
    assert got.dataset == expected.dataset and got.failed_images == expected.failed_images
    for row, reference in zip(got.backbones, expected.backbones, strict=True):
        assert (row.n_images, row.feature_dim, row.rank) == (reference.n_images, reference.feature_dim, reference.rank)
        assert row.unscored == reference.unscored
        _assert_close(row.scores, reference.scores, row.id)
        assert row.ranks == reference.ranks
        assert (row.layers is None) == (reference.layers is None)
        if row.layers is not None and reference.layers is not None:
            assert [layer.module for layer in row.layers.layers] == [layer.module for layer in reference.layers.layers]
            for layer, other in zip(row.layers.layers, reference.layers.layers, strict=True):
                _assert_close(layer.scores, other.scores, (row.id, layer.module))
            assert (row.layers.best_layer, row.layers.freeze_stages) == (
                reference.layers.best_layer, reference.layers.freeze_stages
            )  # fmt: skip


def _is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _listeners_off_loopback() -> list[tuple[int, str, str, int]]:
    """(pid, process, address, port) of every socket that this process or one it started (the cluster's raylets,
    GCS, agents and workers, the actors among them) listens on outside the loopback interface."""
    import psutil  # ships with Ray (its thirdparty_files, on sys.path once Ray is imported)

    me = psutil.Process()
    processes = {process.pid: process for process in [me, *me.children(recursive=True)]}
    found = []
    for connection in psutil.net_connections(kind="inet"):
        if connection.status == psutil.CONN_LISTEN and connection.pid in processes:
            host, port = connection.laddr.ip, connection.laddr.port
            if not _is_loopback(host):
                found.append((connection.pid, " ".join(processes[connection.pid].cmdline()[:2]), host, port))
    return found


@pytest.fixture(scope="module")
def local_result(folder: Path, runtime: Runtime) -> RankingResult:
    return rank(_request(folder, executor="local", cache=False), runtime)


def test_ray_ranking_equals_the_local_one_and_its_cache_serves_local_runs(folder, runtime, local_result):
    snapshots: list[list[tuple[int, str, str, int]]] = []
    processes: list[int] = []

    def on_progress(event: Any) -> None:
        if event.stage == "extract" and not snapshots:  # the driver is connected and the actors are working
            import psutil

            snapshots.append(_listeners_off_loopback())
            processes.append(len(psutil.Process().children(recursive=True)))

    on_ray = rank(_request(folder, executor="ray", cache=True), runtime, progress=on_progress)
    assert snapshots == [[]], f"Ray listens outside the loopback interface: {snapshots}"
    assert processes[0] > 2  # the raylets, GCS and workers were there to be checked
    _assert_same_ranking(on_ray, local_result)
    assert all(row.layers is not None and len(row.layers.layers) > 1 for row in on_ray.backbones)
    assert on_ray.request is not None and on_ray.request.executor == "ray"
    assert local_result.request is not None and local_result.request.executor == "local"
    assert local_result.environment is not None and local_result.environment.executor == {"kind": "local"}
    assert on_ray.environment is not None and on_ray.environment.executor is not None
    executor = on_ray.environment.executor
    assert executor["kind"] == "ray" and executor["cluster"] == "address"
    # 30 images in batches of 8: four shards of whole batches on two one-CPU actors, one per node
    assert (executor["shards"], executor["actors"], executor["nodes"], executor["devices"]) == (4, 2, 2, ["cpu"])
    assert not any(row.from_cache for row in on_ray.backbones)

    # the features the Ray run cached are the local path's cache entries: a local run reads them
    cached = rank(_request(folder, executor="local", cache=True), runtime)
    assert all(row.from_cache for row in cached.backbones)
    _assert_same_ranking(cached, local_result)


def test_streamed_ray_ranking_equals_the_streamed_local_one(folder, runtime):
    local = rank(_request(folder, executor="local", streaming=True, cache=False), runtime)
    on_ray = rank(_request(folder, executor="ray", streaming=True, cache=False), runtime)
    _assert_same_ranking(on_ray, local)
    for row in on_ray.backbones:
        assert [name for name, value in row.scores.items() if value is not None] == STREAMED
    assert on_ray.environment is not None and on_ray.environment.executor is not None
    assert on_ray.environment.executor["shards"] == 4


def test_an_error_inside_a_shard_reaches_the_caller_as_the_local_path_raises_it(folder, runtime):
    """Actors that load another dataset than the driver's (here: told to sample 5 images per class) refuse to
    extract, and the caller gets the actor's typed error, not Ray's wrapper of it."""
    from service.errors import InvalidDataset
    from service.pipeline.data.datasets import load_dataset
    from service.pipeline.features.extract import extract_features
    from service.pipeline.models.backbones import load_backbone
    from service.pipeline.scaleout.actor import DatasetLoad
    from service.pipeline.scaleout.extraction import RayExtractor

    dataset = load_dataset(str(folder))
    sampled = DatasetLoad(ref=dataset.ref.to_dict(), max_per_class=5, seed=0, min_per_class=2)
    extractor = RayExtractor(runtime.ray, sampled)
    with pytest.raises(InvalidDataset, match="differs on Ray node .* every node must see the same files"):
        extract_features(dataset, [load_backbone(BACKBONES[0])], device="cpu", batch_size=BATCH, extractor=extractor)


def _shard_workers() -> list[int]:
    """Pids of this process's descendants that are (or are becoming) ShardWorker actors."""
    import psutil

    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if any("ShardWorker" in part for part in process.cmdline()):
                found.append(process.pid)
        except psutil.Error:  # exited meanwhile
            continue
    return found


def test_cancelling_a_job_stops_its_ray_work(cluster, folder, tmp_path):
    """A service job on Ray, cancelled through the job store while its shards run: the job ends ``cancelled`` and
    its actors are killed (the driver's progress, sent at least every second, is where the worker learns of the
    cancel; the test hook ``fault_progress_delay_s`` holds the driver there long enough to cancel mid-extraction)."""
    import threading
    import time

    from service.jobs.store import JobStore
    from service.jobs.worker import Worker

    settings = Settings(
        cache_dir=tmp_path / "cache",
        data_roots=[folder.parent],
        device="cpu",
        batch_size=BATCH,
        ray_address=cluster.address,
        ray_actors=2,
        ray_shard_images=BATCH,
        job_lease_seconds=3,
        worker_poll_seconds=0.1,
        fault_progress_delay_s=2.0,
    )
    store = JobStore(settings.database_path, lease_seconds=settings.job_lease_seconds).initialize()  # type: ignore[arg-type]
    job, _ = store.submit("ranking", _request(folder, executor="ray", cache=False).model_dump(mode="json"))
    worker = Worker(settings, worker_id="w-ray")
    thread = threading.Thread(target=worker.run, kwargs={"max_jobs": 1, "publish_registry": False}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while (store.get(job.id).progress or {}).get("stage") != "extract" or not _shard_workers():
        assert time.monotonic() < deadline and thread.is_alive(), store.get(job.id)
        time.sleep(0.05)
    working = _shard_workers()
    store.request_cancel(job.id)
    thread.join(60)
    assert not thread.is_alive()
    cancelled = store.get(job.id)
    assert cancelled.state == "cancelled" and cancelled.result is None, cancelled
    assert cancelled.progress["done"] < cancelled.progress["total"]
    while set(working) & set(_shard_workers()):  # the killed actors' processes exit
        assert time.monotonic() < deadline, (working, _shard_workers())
        time.sleep(0.2)
    store.close()


@pytest.mark.slow  # a third node started and killed: ~20 s more, past the module's two minutes
def test_a_lost_node_costs_its_shard_a_retry_not_the_ranking(cluster, folder, local_result, tmp_path):
    """Three actors on three nodes; the third node is removed (killed) as the shards start: its shard goes to
    another actor and the ranking is the local one all the same."""
    extra = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    settings = Settings(
        cache_dir=tmp_path / "cache",
        device="cpu",
        batch_size=BATCH,
        ray_address=cluster.address,
        ray_actors=3,
        ray_shard_images=BATCH,
    )
    removed: list[bool] = []

    def on_progress(event: Any) -> None:
        if event.stage == "extract" and not removed:
            cluster.remove_node(extra, allow_graceful=False)
            removed.append(True)

    on_ray = rank(_request(folder, executor="ray", cache=False), cli_runtime(settings), progress=on_progress)
    assert removed
    _assert_same_ranking(on_ray, local_result)
    assert on_ray.environment is not None and on_ray.environment.executor is not None
    assert on_ray.environment.executor["actors"] == 3 and on_ray.environment.executor["retried_shards"] >= 1
