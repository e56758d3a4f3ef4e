"""What runs in each Ray actor of the executor ``ray``: one shard (a contiguous range of items) at a time.

Separate from the driver (extraction.py) because this code runs in other processes, on other machines: it imports
no Ray (the driver makes :class:`ShardWorker` an actor) and receives only plain data — the settings' values as a
runtime recipe (service/bootstrap.py, ``RuntimeRecipe``), the dataset's reference, backbone ids and item ranges.
From them it builds its own runtime (registries filled in this process), loads the dataset and the backbones with
the local path's code (service/pipeline/data/datasets.py, service/pipeline/models/backbones.py), checks that they
are what the driver loaded (dataset fingerprint; weights sha256 and preprocessing), and runs the local path's own
:func:`~service.pipeline.features.extract.run_group` over the shard, so a shard's rows are the local path's rows.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from estimators import StreamingStatistics
from service.errors import InvalidDataset, WeightsUnavailable
from service.pipeline.data.datasets import Dataset, load_dataset
from service.pipeline.data.refs import DatasetRef
from service.pipeline.features.extract import (
    ExtractionOptions,
    StageFeatures,
    run_group,
    select_device,
    transform_key,
)
from service.pipeline.models.backbones import LoadedBackbone, load_backbone
from service.pipeline.runtime import Runtime

__all__ = ["BackboneCheck", "DatasetLoad", "GroupShard", "ShardJob", "ShardOutput", "ShardResult", "ShardWorker"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetLoad:
    """How the driver loaded the dataset (``ref``: ``DatasetRef.to_dict()``); the actor's runtime gives the roots."""

    ref: dict[str, Any]
    max_per_class: int | None
    seed: int
    min_per_class: int


@dataclass(frozen=True)
class BackboneCheck:
    """A backbone by id, with what the driver's copy was loaded from and how its inputs are prepared."""

    id: str
    weights_sha256: str | None
    preprocessing: str  # transform_key(data_config)

    @classmethod
    def of(cls, backbone: LoadedBackbone) -> BackboneCheck:
        return cls(backbone.spec.id, backbone.weights_sha256, transform_key(backbone.data_config))


@dataclass(frozen=True)
class ShardJob:
    """What every shard of one extraction shares: the dataset, the preprocessing groups, the request's extra weights
    dirs and the extraction options."""

    dataset: DatasetLoad
    fingerprint: str
    n_items: int
    groups: tuple[tuple[BackboneCheck, ...], ...]
    weights_dirs: tuple[str, ...]
    options: ExtractionOptions


@dataclass
class ShardOutput:
    """One backbone's output on a shard: its features and source softmax (None: no row, or streamed) and, when asked
    for, every stage's; or its streaming accumulator (not finalized: the driver merges the shards'); its forward
    seconds."""

    features: NDArray[np.float32] | None
    probs: NDArray[np.float32] | None
    stream: StreamingStatistics | None
    seconds: float
    stages: list[StageFeatures] | None = None


@dataclass
class GroupShard:
    """One preprocessing group on a shard: the items decoded (in order), those that failed, each backbone's output."""

    kept: list[int]
    failed: list[int]
    outputs: list[ShardOutput]


@dataclass
class ShardResult:
    """A shard done: items ``start``..``stop``, on which Ray node and torch device, each group's output."""

    start: int
    stop: int
    node: str
    device: str
    groups: list[GroupShard]


class ShardWorker:
    """Extracts shards; one instance per Ray actor, kept for one extraction.

    Parameters
    ----------
    actor_runtime : callable
        Builds the driver's runtime in this process (``RuntimeRecipe``); called at the first shard, so that an error
        in it reaches the driver as the shard's error.
    threads : int
        torch CPU threads (the CPUs Ray reserved for this actor).
    """

    def __init__(self, actor_runtime: Callable[[], Runtime], threads: int) -> None:
        self._actor_runtime = actor_runtime
        self._threads = threads
        self._runtime: Runtime | None = None
        self._dataset: Dataset | None = None
        self._backbones: dict[str, LoadedBackbone] = {}

    def extract(self, job: ShardJob, start: int, stop: int) -> ShardResult:
        """Items ``start``..``stop`` through every group, as the local path runs them."""
        runtime = self._start()
        dataset = self._load_dataset(job, runtime)
        device = select_device(job.options.device)
        groups = []
        for checks in job.groups:
            group = [self._load_backbone(check, job, runtime) for check in checks]
            done = run_group(dataset, group, device, job.options, items=range(start, stop))
            outputs = [
                ShardOutput(
                    features=np.concatenate(runner.features) if runner.features else None,
                    probs=np.concatenate(runner.probs) if runner.probs else None,
                    stream=runner.stream,
                    seconds=seconds,
                    stages=runner.stage_features() if job.options.stages else None,
                )
                for runner, seconds in zip(done.runners, done.elapsed, strict=True)
            ]
            groups.append(GroupShard(done.kept, done.failed, outputs))
        return ShardResult(start, stop, _node_id(), str(device), groups)

    def _start(self) -> Runtime:
        if self._runtime is None:
            self._runtime = self._actor_runtime()
            torch.set_num_threads(self._threads)
            _logger.info("shard worker %d ready (%d torch threads)", os.getpid(), self._threads)
        return self._runtime

    def _load_dataset(self, job: ShardJob, runtime: Runtime) -> Dataset:
        if self._dataset is None:
            load = job.dataset
            dataset = load_dataset(
                DatasetRef.from_dict(load.ref),
                roots=runtime.roots,
                max_per_class=load.max_per_class,
                seed=load.seed,
                min_per_class=load.min_per_class,
                builtin_dir=runtime.builtin_dir,
                hub_datasets=runtime.hub_datasets(),
                uploads_dir=runtime.uploads_dir,
            )
            if dataset.fingerprint != job.fingerprint or len(dataset) != job.n_items:
                raise InvalidDataset(
                    f"the dataset {load.ref} differs on Ray node {_node_id()} ({len(dataset)} images, fingerprint "
                    f"{dataset.fingerprint[:12]}) from the driver's ({job.n_items} images, {job.fingerprint[:12]}): "
                    "every node must see the same files under the same paths (shared storage)",
                )
            self._dataset = dataset
        return self._dataset

    def _load_backbone(self, check: BackboneCheck, job: ShardJob, runtime: Runtime) -> LoadedBackbone:
        backbone = self._backbones.get(check.id)
        if backbone is None:
            backbone = load_backbone(
                check.id,
                weights_dirs=[*runtime.weights_dirs, *map(Path, job.weights_dirs)],
                hf_cache_dir=runtime.hf_cache_dir,
                allowlist=runtime.allowlist,
                hub=runtime.hub,
            )
            found = BackboneCheck.of(backbone)
            if found != check:
                raise WeightsUnavailable(
                    f"backbone {check.id!r} loads differently on Ray node {_node_id()} (weights sha256 "
                    f"{found.weights_sha256}, preprocessing {found.preprocessing}) than on the driver (sha256 "
                    f"{check.weights_sha256}, preprocessing {check.preprocessing}): give every node the same weights "
                    "files and the same timm version",
                    backbone=check.id,
                )
            self._backbones[check.id] = backbone
        return backbone


def _node_id() -> str:
    """The Ray node this actor runs on (Ray is importable here: this code runs inside a Ray worker)."""
    ray: Any = importlib.import_module("ray")  # Any: Ray's annotations are incomplete (session.py)
    return str(ray.get_runtime_context().get_node_id())
