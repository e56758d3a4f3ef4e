"""The driver of the executor ``ray``: the dataset's items in contiguous shards, each extracted by a Ray actor.

:class:`RayExtractor` is a :class:`~service.pipeline.features.extract.GroupExtractor`: the feature extraction
(service/pipeline/features/extract.py) calls it for the backbones its cache did not serve, and reads and fills the
cache itself, as for the local path. Here:

* the items are split into contiguous shards of whole batches (:func:`plan_shards`), so every batch an actor runs
  is a batch the local path runs, and the rows come out the same;
* each actor (actor.py) builds the driver's runtime in its own process from the settings' values, loads the
  dataset by reference and the backbones by id, and runs every preprocessing group over a shard (one decode per
  group, as locally); only ids, the reference, item ranges and options travel to it, never a model or weights;
* the driver hands shards to idle actors, gives the shard of an actor that died (its node lost, say) to the next
  free one (up to :data:`MAX_SHARD_ATTEMPTS` tries; a new actor only when none is left), and reassembles each
  backbone's rows in dataset order — features and source softmax concatenated, or the shards' streaming
  statistics merged pairwise (``StreamingStatistics.merge``) — into the FeatureSets the local path would have made;
* while shards run, it sends "extract" progress at least every :data:`POLL_S` seconds, so a job worker learns of a
  cancel there and leaves: every actor is killed on the way out, whatever the reason.

How the actors are sized: ``RayOptions`` (service/pipeline/runtime.py, from the ``BACKBONE_RANK_RAY_*`` settings).
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from estimators import StreamingStatistics
from service.errors import BackboneRankError, ExecutorUnavailable
from service.pipeline.data.datasets import Dataset
from service.pipeline.features.extract import (
    ExtractionOptions,
    FeatureSet,
    ProgressCallback,
    ProgressEvent,
    StageFeatures,
    assemble_feature_set,
)
from service.pipeline.models.backbones import LoadedBackbone
from service.pipeline.runtime import RayOptions
from service.pipeline.scaleout.actor import (
    BackboneCheck,
    DatasetLoad,
    ShardJob,
    ShardOutput,
    ShardResult,
    ShardWorker,
)
from service.pipeline.scaleout.session import RaySession, ray_session

__all__ = ["MAX_SHARD_ATTEMPTS", "POLL_S", "RayExtractor", "plan_shards"]

_logger = logging.getLogger(__name__)

#: Tries of one shard whose actor died (its node lost, killed); an error inside the shard is never retried.
MAX_SHARD_ATTEMPTS = 3
#: Longest wait for a shard before the driver sends progress again (and so learns of a job's cancel).
POLL_S = 1.0


def plan_shards(n_items: int, batch_size: int, shard_images: int, actors: int) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` ranges covering ``0..n_items``: at most ``shard_images`` items each (rounded up to
    whole batches, so each shard's batches are the local path's batches), and at least ``actors`` of them when the
    items make that many batches."""
    if n_items <= 0:
        return []
    size = min(shard_images, math.ceil(n_items / max(1, actors)))
    size = max(1, math.ceil(size / batch_size)) * batch_size
    return [(start, min(start + size, n_items)) for start in range(0, n_items, size)]


@dataclass
class RayExtractor:
    """Extract on the Ray cluster and actors of ``ray``; ``dataset`` says how the driver loaded the dataset (the
    actors load it the same way and check its fingerprint), ``weights_dirs`` are the request's extra weights dirs.

    After a run, :meth:`describe` says where it ran (the result's ``environment.executor``).
    """

    ray: RayOptions
    dataset: DatasetLoad
    weights_dirs: tuple[str, ...] = ()
    record: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """``{"kind": "ray", "cluster", "actors", "cpus_per_actor", "gpus_per_actor", "shards", "retried_shards",
        "nodes", "devices", "ray"}`` (only ``kind`` and the options when every backbone came from the cache)."""
        return {
            "kind": "ray",
            "actors": self.ray.actors,
            "cpus_per_actor": self.ray.cpus_per_actor,
            "gpus_per_actor": self.ray.gpus_per_actor,
            **self.record,
        }

    def __call__(
        self,
        dataset: Dataset,
        groups: Sequence[Sequence[LoadedBackbone]],
        options: ExtractionOptions,
        progress: ProgressCallback | None,
    ) -> Iterator[list[FeatureSet]]:
        """The :class:`~service.pipeline.features.extract.GroupExtractor` protocol; every group in one pass of the
        shards, yielded once all shards are done."""
        if self.ray.actor_runtime is None:
            raise ValueError(
                "the executor 'ray' needs a runtime built from settings (service.bootstrap.cli_runtime or "
                "service_runtime): its actors rebuild it from them"
            )
        shards = plan_shards(len(dataset), options.batch_size, self.ray.shard_images, self.ray.actors)
        job = ShardJob(
            dataset=self.dataset,
            fingerprint=dataset.fingerprint,
            n_items=len(dataset),
            groups=tuple(tuple(BackboneCheck.of(backbone) for backbone in group) for group in groups),
            weights_dirs=self.weights_dirs,
            options=options,
        )
        ids = [backbone.spec.id for group in groups for backbone in group]
        results: list[ShardResult] = []
        if shards:
            with ray_session(self.ray.address) as session:
                results = self._run(session, job, shards, ids, len(dataset), progress)
        yield from _assemble(dataset, groups, results, options, progress)

    def _run(
        self,
        session: RaySession,
        job: ShardJob,
        shards: list[tuple[int, int]],
        ids: list[str],
        n_items: int,
        progress: ProgressCallback | None,
    ) -> list[ShardResult]:
        ray = session.ray
        cpus, gpus, n_actors = self._size(ray, len(shards))
        worker = ray.remote(ShardWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0)
        threads = max(1, int(cpus))

        def new_actor() -> Any:
            return worker.remote(self.ray.actor_runtime, threads)

        actors = {slot: new_actor() for slot in range(n_actors)}  # the live actors
        _logger.info(
            "extracting %d images in %d shards on %d Ray actors (%g CPUs, %g GPUs each)",
            n_items, len(shards), n_actors, cpus, gpus,
        )  # fmt: skip
        job_ref = ray.put(job)
        queue = collections.deque(range(len(shards)))
        attempts = collections.Counter[int]()
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (actor slot, shard)
        done: dict[int, ShardResult] = {}
        retried = 0

        def hand_out() -> None:
            """The next queued shards to the live actors that have none."""
            busy = {slot for slot, _ in running.values()}
            for slot, actor in actors.items():
                if queue and slot not in busy:
                    shard = queue.popleft()
                    attempts[shard] += 1
                    running[actor.extract.remote(job_ref, *shards[shard])] = (slot, shard)

        try:
            hand_out()
            while running:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    slot, shard = running.pop(ref)
                    try:
                        done[shard] = ray.get(ref)
                    except ray.exceptions.RayActorError as err:
                        if attempts[shard] >= MAX_SHARD_ATTEMPTS:
                            raise
                        # The shard goes back to the queue, for the next free actor; a new actor only when none is
                        # left (one started beside busy ones could wait for their resources for ever).
                        _logger.warning("shard %s lost with its actor (%s); it goes to another", shards[shard], err)
                        retried += 1
                        queue.appendleft(shard)
                        ray.kill(actors.pop(slot))
                        if not actors:
                            actors[slot] = new_actor()
                    except ray.exceptions.RayTaskError as err:
                        raise _cause(err) from None
                hand_out()
                if progress is not None:
                    finished = sum(shards[shard][1] - shards[shard][0] for shard in done)
                    for backbone_id in ids:
                        progress(ProgressEvent("extract", backbone_id, finished, n_items))
        finally:
            for actor in actors.values():
                ray.kill(actor)
        ordered = [done[shard] for shard in range(len(shards))]
        self.record.update(
            cluster=session.cluster,
            actors=n_actors,
            cpus_per_actor=cpus,
            gpus_per_actor=gpus,
            shards=len(shards),
            retried_shards=retried,
            nodes=len({result.node for result in ordered}),
            devices=sorted({result.device for result in ordered}),
            ray=str(ray.__version__),
        )
        return ordered

    def _size(self, ray: Any, n_shards: int) -> tuple[float, float, int]:
        """CPUs and GPUs per actor, and how many actors: the options, within what the cluster holds (an actor asking
        for more than any cluster has would wait for ever)."""
        resources = ray.cluster_resources()
        cluster_cpus, cluster_gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
        cpus = self.ray.cpus_per_actor
        gpus = self.ray.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if cluster_gpus >= 1 else 0.0
        fit = math.floor(cluster_cpus / cpus)
        if gpus:
            fit = min(fit, math.floor(cluster_gpus / gpus))
        n_actors = min(self.ray.actors, n_shards, fit)
        if n_actors < 1:
            raise ExecutorUnavailable(
                f"the Ray cluster has {cluster_cpus:g} CPUs and {cluster_gpus:g} GPUs, and one actor needs {cpus:g} "
                f"CPUs and {gpus:g} GPUs: lower BACKBONE_RANK_RAY_CPUS_PER_ACTOR / BACKBONE_RANK_RAY_GPUS_PER_ACTOR, "
                "or add nodes",
                executor="ray",
            )
        return cpus, gpus, n_actors


def _cause(err: Any) -> BaseException:
    """The error raised inside a shard, as the local path raises it (a typed error keeps its code and detail);
    anything else stays Ray's error, whose text carries the actor's traceback."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BackboneRankError | ValueError):
        _logger.info("shard failed on its actor: %s", err)
        return cause
    return err


def _assemble(
    dataset: Dataset,
    groups: Sequence[Sequence[LoadedBackbone]],
    results: list[ShardResult],
    options: ExtractionOptions,
    progress: ProgressCallback | None,
) -> Iterator[list[FeatureSet]]:
    """Each group's FeatureSets from the shards (in shard order, hence dataset order), built as the local path
    builds them (:func:`~service.pipeline.features.extract.assemble_feature_set`)."""
    for g, group in enumerate(groups):
        parts = [result.groups[g] for result in results]
        kept = [index for part in parts for index in part.kept]
        failed = [index for part in parts for index in part.failed]
        indices = np.asarray(kept, dtype=np.int64)
        labels = dataset.labels[indices].astype(np.int64) if indices.size else np.zeros(0, dtype=np.int64)
        feature_sets = []
        for j, backbone in enumerate(group):
            outputs = [part.outputs[j] for part in parts]
            features = [output.features for output in outputs if output.features is not None]
            probs = [output.probs for output in outputs if output.probs is not None]
            seconds = sum(output.seconds for output in outputs)
            stages = _joined_stages(outputs) if options.stages else None
            feature_sets.append(
                assemble_feature_set(
                    backbone, options, labels, indices, failed, seconds, features, probs, _merged(outputs), stages
                )
            )
            if progress is not None:
                progress(ProgressEvent("done", backbone.spec.id, len(dataset), len(dataset)))
        yield feature_sets


def _merged(outputs: Sequence[ShardOutput]) -> StreamingStatistics | None:
    """The shards' streaming statistics merged pairwise, in shard order (None: not streamed, or no row decoded).

    Into a new accumulator: the shards' arrays come out of Ray's object store read-only."""
    parts = [output.stream for output in outputs if output.stream is not None]
    if not parts:
        return None
    merged = StreamingStatistics(parts[0].n_classes_hint, class_scatter=parts[0].class_scatter)
    for part in parts:
        merged.merge(part)
    return merged


def _joined_stages(outputs: Sequence[ShardOutput]) -> list[StageFeatures]:
    """Every stage's rows from the shards (in shard order), stage by stage; a shard without rows has none."""
    modules: dict[int, str] = {}
    blocks: dict[int, list[Any]] = {}
    for output in outputs:
        for stage in output.stages or []:
            modules[stage.index] = stage.module
            blocks.setdefault(stage.index, []).append(stage.features)
    return [
        StageFeatures(index, modules[index], np.ascontiguousarray(np.concatenate(blocks[index]), dtype=np.float32))
        for index in sorted(blocks)
    ]
